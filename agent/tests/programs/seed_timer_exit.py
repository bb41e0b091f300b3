# Seed shape 2: a threading.Timer(0.5, f) whose callback arms a fresh
# Timer(0.5, f); main falls off the end of the module. Expected blocked state
# (forever, on Python 3.11): main thread in futex(2) (wchan futex_wait...)
# inside Py_FinalizeEx -> threading._shutdown joining the current timer; one
# timer thread at a time, a new tid every ~0.5 s. (Python >= 3.12.1 refuses to
# start threads during shutdown, so there the program exits.) READY pid=P on
# stderr. argv[1]: seconds main runs before falling off the end (default 0.3).
import os
import sys
import threading
import time


def f():
    t = threading.Timer(0.5, f)
    t.start()


threading.Timer(0.5, f).start()
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.3)
