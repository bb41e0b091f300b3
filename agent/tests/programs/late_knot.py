# A knot that forms long after one of its processes blocked. The parent reads pipe X,
# whose write end only the child holds; the child sleeps argv[1] seconds (it can run:
# the parent is live, only waiting), then writes 1 MiB into pipe Y, whose read end only
# the parent holds and never reads. From then on neither can proceed. The agent has
# long found the parent live and stopped looking at it by then; the child's new wait
# must bring it back. READY parent=P child=C on stderr.
import os
import sys
import time

delay = float(sys.argv[1])
x_read, x_write = os.pipe()
y_read, y_write = os.pipe()
child = os.fork()
if child == 0:
    os.close(x_read)
    os.close(y_read)
    time.sleep(delay)
    data = memoryview(b"x" * (1 << 20))
    while data:
        data = data[os.write(y_write, data):]
    os._exit(0)
os.close(x_write)
os.close(y_write)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), child)).encode())
os.read(x_read, 1)
