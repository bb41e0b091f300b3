# Hang shape: multiprocessing (fork) child puts 1 MB on a Queue and returns;
# the parent join()s the child before get(). Expected blocked state (forever):
# child feeder thread ("QueueFeederThread") in write(2) on the queue pipe
# (wchan anon_pipe_write); child main thread exiting (multiprocessing
# finalizers -> Queue._finalize_join) in futex(2) joining the feeder; parent
# main thread in wait4(2) (wchan do_wait). READY parent=P child=C on stderr.
# The child holds its own copy of the queue's read end, so it would never see
# EPIPE: it asks for SIGKILL when the parent dies (PR_SET_PDEATHSIG).
import ctypes
import multiprocessing as mp
import os
import signal

PR_SET_PDEATHSIG = 1


def child(q, parent):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    q.put(b"x" * 1_000_000)


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q, os.getpid()))
    p.start()
    os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())
    p.join()
    q.get()
