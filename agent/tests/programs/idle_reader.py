# Control (must stay silent): a forked child blocks forever in read(2) on an
# idle pipe (wchan anon_pipe_read); the write end is held by the healthy,
# non-exiting parent, which sleeps in a loop (clock_nanosleep). Nobody is
# exiting, so this is not an exit hang. Runs until killed; if the parent dies
# the reader sees EOF and exits. READY reader=R writer=W on stderr.
import os
import time

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    while os.read(r, 4096):
        pass
    os._exit(0)

os.close(r)
os.write(2, ("READY reader=%d writer=%d\n" % (pid, os.getpid())).encode())
while True:
    time.sleep(3600)
