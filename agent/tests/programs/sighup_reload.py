# Healthy control: a daemon that reloads its configuration on SIGHUP and
# otherwise sleeps in timed waits (Event.wait(30), as many daemons do). After a
# SIGHUP it is "signalled" and blocked, but a wait with a timeout ends by itself:
# no incident. READY pid=P on stderr; prints "reloaded" on stderr per SIGHUP.
import os
import signal
import threading

wake = threading.Event()


def on_hup(signum, frame):
    os.write(2, b"reloaded\n")


signal.signal(signal.SIGHUP, on_hup)
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
while True:
    wake.wait(30)
