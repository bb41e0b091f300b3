# Hang shape: exit blocked on a pipe whose reader is alive but stopped.
# The parent (the WRITER) creates a pipe and forks the READER, which reads one
# byte and SIGSTOPs itself. The writer waits until the reader is stopped,
# prints READY writer=W reader=R on stderr, then falls off the end of the
# module; its atexit handler (run inside Py_FinalizeEx, i.e. the interpreter
# exit phase, before exit_group) writes 256 KiB into the pipe. Expected blocked
# state (forever): writer main thread in write(2) (wchan anon_pipe_write);
# reader in state T (stopped, wchan do_signal_stop). The reader asks for
# SIGKILL if the writer dies (PR_SET_PDEATHSIG) so it never lingers stopped.
import atexit
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1

writer = os.getpid()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != writer:
        os._exit(1)
    os.close(w)
    os.read(r, 1)
    os.kill(os.getpid(), signal.SIGSTOP)
    # Only reached if someone sends SIGCONT: drain and exit.
    while os.read(r, 65536):
        pass
    os._exit(0)

os.close(r)
os.write(w, b"!")
os.waitpid(pid, os.WUNTRACED)  # returns once the reader has stopped itself
os.write(2, ("READY writer=%d reader=%d\n" % (writer, pid)).encode())


def flush_at_exit():
    view = memoryview(b"z" * (256 * 1024))
    while view:
        view = view[os.write(w, view):]
    os.close(w)


atexit.register(flush_at_exit)
