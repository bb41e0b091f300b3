# Control (must NOT hang): a writer child keeps the pipe full while the parent
# drains it slowly (4 KiB every 50 ms) for about argv[1] seconds (default 6).
# The writer spends most of its time in write(2) (wchan anon_pipe_write) and
# the reader in clock_nanosleep/read, but data flows steadily and both exit 0.
# With "--at-exit" the writer does all its writing from an atexit handler, i.e.
# it is in the interpreter exit phase (Py_FinalizeEx) while blocked in write.
# READY parent=P child=C on stderr (parent = reader, child = writer); the last
# stdout line is DONE bytes=N (flushed).
# Usage: slow_consumer.py [SECONDS] [--at-exit]
import os
import subprocess
import sys
import time

args = [a for a in sys.argv[1:] if a != "--at-exit"]
at_exit = "--at-exit" in sys.argv[1:]
seconds = float(args[0]) if args else 6.0
CHUNK = 4096
PERIOD = 0.05
# Exactly as many bytes as the reader drains in `seconds`.
total_bytes = max(1, int(seconds / PERIOD)) * CHUNK

CHILD = (
    "import atexit, os, sys\n"
    "def produce():\n"
    "    left = int(sys.argv[1])\n"
    "    chunk = b'y' * 65536\n"
    "    while left:\n"
    "        left -= os.write(1, chunk[:min(left, len(chunk))])\n"
    "if sys.argv[2] == 'at-exit':\n"
    "    atexit.register(produce)\n"
    "else:\n"
    "    produce()\n"
)

p = subprocess.Popen([sys.executable, "-c", CHILD, str(total_bytes),
                      "at-exit" if at_exit else "now"],
                     stdout=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())

fd = p.stdout.fileno()
got = 0
while True:
    buf = os.read(fd, CHUNK)
    if not buf:
        break
    got += len(buf)
    time.sleep(PERIOD)
p.stdout.close()
rc = p.wait()
if rc != 0 or got != total_bytes:
    os.write(2, ("FAIL rc=%d bytes=%d\n" % (rc, got)).encode())
    sys.exit(1)
sys.stdout.buffer.write(b"DONE bytes=%d\n" % got)
sys.stdout.buffer.flush()
