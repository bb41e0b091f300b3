# Hang shape: an atexit handler joins a (daemon) thread that never returns.
# Daemon threads are not joined by threading._shutdown, so the interpreter
# gets past it and runs the atexit callbacks inside Py_FinalizeEx, where
# stop_worker() blocks. Expected blocked state: main thread (exit phase,
# atexit callback stop_worker -> Thread.join) in futex(2); the worker in
# futex(2) (Event.wait); both futex_do_wait. READY pid=P on stderr.
import atexit
import os
import threading

never = threading.Event()
worker = threading.Thread(target=never.wait, name="worker", daemon=True)
worker.start()


def stop_worker():
    worker.join()


atexit.register(stop_worker)
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
