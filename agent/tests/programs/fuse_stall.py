"""Attacker with its own FUSE server (run as root in a private mount namespace: it
mounts on DIR): it maps DIR/libc.so.6 from its file system low in its address space
(before the real libc in maps), then its server stops answering, so anything that
opens or reads that file blocks until the process dies. Then it blocks in a pipe write
that nothing drains, so its stack gets searched for libc's `exit`.

    fuse_stall.py DIR

Speaks the FUSE protocol on /dev/fuse directly (no libfuse on these machines): INIT,
LOOKUP, GETATTR, OPEN, READ, FLUSH, RELEASE. Prints READY pid=P on stderr.
"""
import ctypes
import os
import struct
import sys
import threading
import time

mountpoint = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]

LOOKUP, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT = 1, 3, 14, 15, 18, 25, 26
ENOENT, ENOSYS = 2, 38
FILE_NODE, FILE_SIZE = 2, 4096
LONG = 3600  # seconds the kernel may cache entries and attributes

fuse = os.open("/dev/fuse", os.O_RDWR)
options = f"fd={fuse},rootmode=40000,user_id=0,group_id=0".encode()
if libc.mount(b"exitwatch-fuse", mountpoint.encode(), b"fuse", 0, options) != 0:
    sys.exit(f"mount failed: {os.strerror(ctypes.get_errno())}")
stalled = threading.Event()


def attr(node):
    mode, size = (0o40755, 0) if node == 1 else (0o100644, FILE_SIZE)
    # ino size blocks atime mtime ctime (ns x3) mode nlink uid gid rdev blksize flags
    return struct.pack("<6Q3I7I", node, size, 8, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0,
                       4096, 0)


def reply(unique, payload=b"", error=0):
    os.write(fuse, struct.pack("<IiQ", 16 + len(payload), -error, unique) + payload)


def serve():
    while True:
        request = os.read(fuse, 1 << 20)
        if stalled.is_set():
            # Hold every request from now on, unanswered, for as long as we live.
            time.sleep(1 << 30)
        length, opcode, unique, node = struct.unpack_from("<IIQQ", request)
        body = request[40:length]
        if opcode == INIT:
            major, minor, readahead = struct.unpack_from("<III", body)
            reply(unique, struct.pack("<IIIIHHIIHHII", 7, 31, readahead, 0, 16, 12,
                                      4096, 1, 32, 0, 0, 0) + bytes(24))
        elif opcode == LOOKUP:
            if node == 1 and body.rstrip(b"\0") == b"libc.so.6":
                reply(unique, struct.pack("<4Q2I", FILE_NODE, 0, LONG, LONG, 0, 0)
                      + attr(FILE_NODE))
            else:
                reply(unique, error=ENOENT)
        elif opcode == GETATTR:
            reply(unique, struct.pack("<QII", LONG, 0, 0) + attr(node))
        elif opcode == OPEN:
            reply(unique, struct.pack("<QII", 1, 0, 0))
        elif opcode == READ:
            offset, size = struct.unpack_from("<QI", body, 8)
            reply(unique, bytes(max(0, min(size, FILE_SIZE - offset))))
        elif opcode in (FLUSH, RELEASE):
            reply(unique)
        else:
            reply(unique, error=ENOSYS)


threading.Thread(target=serve, daemon=True).start()
fd = os.open(os.path.join(mountpoint, "libc.so.6"), os.O_RDONLY)
PROT_READ, MAP_PRIVATE = 1, 2
address = libc.mmap(0x10000000, FILE_SIZE, PROT_READ, MAP_PRIVATE, fd, 0)
if address in (None, ctypes.c_void_p(-1).value):
    sys.exit(f"mmap failed: {os.strerror(ctypes.get_errno())}")
os.close(fd)
stalled.set()

read_end, write_end = os.pipe()
os.write(2, f"READY pid={os.getpid()}\n".encode())
os.write(write_end, b"x" * (1 << 20))
