# Seed shape 1: Popen(stdout=PIPE, stderr=PIPE).wait() while the child writes
# 256 KiB to stdout. Expected blocked state (forever): child main thread in
# write(2) on the stdout pipe (wchan anon_pipe_write), parent main thread in
# wait4(2) (wchan do_wait). READY parent=P child=C goes to stderr, after Popen
# and before wait(); stdout is never used by the parent.
import os
import subprocess
import sys

CHILD = (
    "import os, time\n"
    "data = b'x' * (256 * 1024)\n"
    "view = memoryview(data)\n"
    "while view:\n"
    "    n = os.write(1, view)\n"
    "    view = view[n:]\n"
    "time.sleep(3600)\n"
)

p = subprocess.Popen([sys.executable, "-c", CHILD],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())
p.wait()
