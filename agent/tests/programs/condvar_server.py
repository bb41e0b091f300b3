# Control (must stay silent): a non-exiting server whose 4 worker threads wait
# forever on a threading.Condition for work (futex, wchan futex_do_wait /
# futex_wait_queue) while the main thread sleeps in a loop (clock_nanosleep).
# Nothing is exiting. Runs until killed. READY pid=P on stderr.
import os
import threading
import time

cond = threading.Condition()
work = []


def worker():
    while True:
        with cond:
            while not work:
                cond.wait()
            work.pop()


for i in range(4):
    threading.Thread(target=worker, name="worker-%d" % i, daemon=True).start()
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
while True:
    time.sleep(3600)
