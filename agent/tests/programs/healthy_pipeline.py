# Control (must NOT hang): producer child -> consumer parent through a pipe,
# moving argv[1] MiB (default 128). The producer is often briefly in write(2)
# (anon_pipe_write) and the consumer in read(2), but bytes keep moving and both
# exit 0 within a few seconds. READY parent=P child=C on stderr; the last
# stdout line is DONE bytes=N (flushed).
import os
import subprocess
import sys

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 128

CHILD = (
    "import os, sys\n"
    "chunk = b'x' * (1 << 20)\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    view = memoryview(chunk)\n"
    "    while view:\n"
    "        view = view[os.write(1, view):]\n"
)

p = subprocess.Popen([sys.executable, "-c", CHILD, str(mib)],
                     stdout=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())

fd = p.stdout.fileno()
total = 0
while True:
    buf = os.read(fd, 1 << 20)
    if not buf:
        break
    total += len(buf)
p.stdout.close()
rc = p.wait()
if rc != 0 or total != mib << 20:
    os.write(2, ("FAIL rc=%d bytes=%d\n" % (rc, total)).encode())
    sys.exit(1)
sys.stdout.buffer.write(b"DONE bytes=%d\n" % total)
sys.stdout.buffer.flush()
