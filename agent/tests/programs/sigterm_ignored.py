# Hang shape: exit hang that survives SIGTERM. A SIGTERM handler only sets a
# flag (and notes it on stderr); a non-daemon thread waits forever on an Event;
# main falls off the end, so Py_FinalizeEx -> threading._shutdown joins that
# thread forever. Expected blocked state, before and after SIGTERM: main thread
# in futex(2) (join), worker in futex(2) (Event.wait), wchan futex_do_wait.
# READY pid=P on stderr; each SIGTERM prints "SIGTERM ignored n=N" on stderr.
import os
import signal
import threading
import time

count = 0


def on_term(signum, frame):
    global count
    count += 1
    os.write(2, ("SIGTERM ignored n=%d\n" % count).encode())


signal.signal(signal.SIGTERM, on_term)
never = threading.Event()
threading.Thread(target=never.wait, name="waiter").start()
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
time.sleep(0.1)
