# Hang shape: subprocess.run(capture_output=True) of a shell that starts a background
# process without redirecting its output, then exits. The orphan (re-parented to init or
# a subreaper) keeps the write ends of both pipes, so communicate() never sees EOF,
# although nothing is deadlocked: the orphan is alive, just not writing.
# Reader main thread: poll (7) on the two pipes, no timeout; child (sh): zombie; orphan:
# clock_nanosleep (230). READY reader=R child=C orphan=O on stderr (from a helper thread,
# once the shell has said the pids on a side pipe the orphan does not keep).
# Control: argv[1] "chatty" makes the background process write a line every 0.5 s for 5 s
# and end: the reader keeps getting data, then EOF; prints DONE bytes=N and exits 0.
import os
import subprocess
import sys
import threading

r, w = os.pipe()
if len(sys.argv) > 1 and sys.argv[1] == "chatty":
    background = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick; sleep 0.5; done"
else:
    background = "sleep 600"


def announce():
    child, orphan = os.read(r, 100).split()
    os.write(2, b"READY reader=%d child=%s orphan=%s\n" % (os.getpid(), child, orphan))


threading.Thread(target=announce, daemon=True).start()
script = "(%s) %d>&- & echo $$ $! >&%d" % (background, w, w)
result = subprocess.run(["sh", "-c", script], capture_output=True, pass_fds=(w,))
print("DONE bytes=%d" % len(result.stdout))
