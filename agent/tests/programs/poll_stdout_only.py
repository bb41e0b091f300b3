# Hang shape: a parent that waits for the child's output with poll(2), epoll(7) or
# select(2) (argv[1] "poll", "epoll" or "select", default poll), without a timeout, on the
# stdout pipe only, while the child is stuck writing 256 KiB into the stderr pipe that
# nobody reads. Parent: poll (7), epoll_wait (232) or pselect6 (270, glibc's select);
# child: write (1) on fd 2, wchan anon_pipe_write.
# Control: "select-timeout" loops on select() with a 0.5 s timeout instead (it wakes by
# itself, so it is not stuck, however long the child stays blocked).
# READY parent=P child=C on the parent's stderr.
import os
import select
import subprocess
import sys

CHILD = (
    "import os\n"
    "data = memoryview(b'e' * (256 * 1024))\n"
    "while data:\n"
    "    data = data[os.write(2, data):]\n"
    "os.write(1, b'done\\n')\n"
)

mode = sys.argv[1] if len(sys.argv) > 1 else "poll"
p = subprocess.Popen([sys.executable, "-c", CHILD],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
os.write(2, ("READY parent=%d child=%d\n" % (os.getpid(), p.pid)).encode())
if mode == "select":
    select.select([p.stdout], [], [])
elif mode == "select-timeout":
    while not select.select([p.stdout], [], [], 0.5)[0]:
        pass
elif mode == "epoll":
    waiter = select.epoll()
    waiter.register(p.stdout.fileno(), select.EPOLLIN)
    waiter.poll()
else:
    waiter = select.poll()
    waiter.register(p.stdout.fileno(), select.POLLIN)
    waiter.poll()
