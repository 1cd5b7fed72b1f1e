"""Random hex ids for rows and requests, from os.urandom read in blocks.

A paid call makes several (its request id, the origin signature's nonce, a charge or
payment id). os.urandom per id is a system call, and on the serving thread every system
call lets the store's writer thread take the GIL: a measurable share of a call's CPU. One
4 KiB block per thread gives 256 ids of 16 bytes, with the same randomness. The block is
per thread and dropped in a forked child, so no two ids come from the same bytes.
"""

from __future__ import annotations

import os
import threading

_BLOCK = 4096
_local = threading.local()


def random_hex(nbytes: int = 16) -> str:
    """`nbytes` random bytes as lowercase hex (2 * nbytes characters)."""
    buf: bytes = getattr(_local, "buf", b"")
    pos: int = getattr(_local, "pos", 0)
    if pos + nbytes > len(buf):
        buf = _local.buf = os.urandom(max(_BLOCK, nbytes))
        pos = 0
    _local.pos = pos + nbytes
    return buf[pos:pos + nbytes].hex()


def _forget() -> None:
    _local.buf, _local.pos = b"", 0


os.register_at_fork(after_in_child=_forget)
