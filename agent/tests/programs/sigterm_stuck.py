# Hang shape: stuck after a signal. A SIGTERM handler only sets a flag that nothing
# reads, while the only thread waits forever on an Event (futex(2), no timeout). Nothing
# is exiting until the signal; after it the process is still blocked in the same wait.
# READY pid=P on stderr; each SIGTERM prints "SIGTERM noted" on stderr.
import os
import signal
import threading

stop_requested = False


def on_term(signum, frame):
    global stop_requested
    stop_requested = True
    os.write(2, b"SIGTERM noted\n")


signal.signal(signal.SIGTERM, on_term)
os.write(2, ("READY pid=%d\n" % os.getpid()).encode())
threading.Event().wait()
