# Hang shape: Popen(stdout=PIPE, stderr=PIPE); the parent reads the child's
# stderr to EOF (p.stderr.read()) while the child is stuck writing 256 KiB to
# stdout, which nobody reads. Expected blocked state (forever): parent in
# read(2) on the stderr pipe (wchan anon_pipe_read), child in write(2) on the
# stdout pipe (wchan anon_pipe_write). Neither process is exiting yet.
# READY parent=P child=C on stderr before the read.
import os
import subprocess
import sys

CHILD = (
    "import os\n"
    "view = memoryview(b'x' * (256 * 1024))\n"
    "while view:\n"
    "    view = view[os.write(1, view):]\n"
    "os.write(2, b'child done\\n')\n"
)

p = subprocess.Popen([sys.executable, "-c", CHILD],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())
err = p.stderr.read()
out = p.stdout.read()
p.wait()
