# Hang shape: the seed pipe deadlock (Popen(stdout=PIPE).wait() while the child
# fills the pipe), in a parent whose process name (comm) holds a newline and a
# terminal escape sequence: text output must show them, not obey them.
# READY parent=P child=C on stderr.
import ctypes
import os
import subprocess
import sys

PR_SET_NAME = 15
ctypes.CDLL(None).prctl(PR_SET_NAME, b"ev\nINFO x\x1b[2J", 0, 0, 0)

CHILD = "import os, time\nos.write(1, b'x' * (256 * 1024))\ntime.sleep(3600)\n"
p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())
p.wait()
