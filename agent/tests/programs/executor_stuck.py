# Hang shape: a ThreadPoolExecutor task that never ends (waits on an Event that
# is never set); main returns without shutdown(), so interpreter exit
# (threading._shutdown -> concurrent.futures.thread._python_exit) joins the
# worker forever. Expected blocked state: main thread in futex(2) (join),
# worker thread in futex(2) (Event.wait), both wchan futex_do_wait.
# READY pid=P on stderr.
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

never = threading.Event()
pool = ThreadPoolExecutor(max_workers=2)
pool.submit(never.wait)
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
time.sleep(0.1)
