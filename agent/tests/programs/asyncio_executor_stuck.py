# Hang shape: asyncio.run(main()) where main starts a job in the loop's default
# executor (run_in_executor(None, ...)) without waiting for it, and returns. The
# job waits on an Event nobody sets. asyncio.run() then tears the loop down:
# on 3.9+ loop.shutdown_default_executor() starts a thread that runs
# BaseEventLoop._do_shutdown -> executor.shutdown(wait=True), joining the
# worker forever, while the main thread waits in the event loop (epoll_wait)
# for that thread to report. This is before Py_FinalizeEx: no exit marker
# fires. (3.12+ gives up after 300 s, and the interpreter's exit then joins
# the worker in threading._shutdown; 3.8 and older join it at exit.)
# Expected blocked state: main thread in epoll_wait (232); the shutdown
# thread in futex(2) (join); the worker in futex(2) (Event.wait); futexes
# futex_do_wait. READY pid=P on stderr.
import asyncio
import os
import threading

never = threading.Event()


def blocking_forever():
    never.wait()


async def main():
    loop = asyncio.get_running_loop()
    # Fire and forget: the job is never awaited.
    loop.run_in_executor(None, blocking_forever)
    os.write(2, ("READY pid=%d\n" % os.getpid()).encode())


asyncio.run(main())
