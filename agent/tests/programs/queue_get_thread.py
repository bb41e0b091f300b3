# Hang shape: a non-daemon thread blocked forever in queue.Queue().get(); the
# main thread falls off the end of the module, so Py_FinalizeEx ->
# threading._shutdown joins it forever. Expected blocked state: main thread in
# futex(2) (join), worker thread in futex(2) (Queue.get -> Condition.wait),
# both wchan futex_do_wait. READY pid=P on stderr.
import os
import queue
import threading
import time

q = queue.Queue()
threading.Thread(target=q.get, name="getter").start()
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
time.sleep(0.1)
