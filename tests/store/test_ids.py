"""store.ids: random hex ids from blocks of os.urandom, never repeated, not even across a
fork (the child must not hand out the parent's remaining bytes)."""

from __future__ import annotations

import os
import re
import threading

from store.ids import random_hex


def test_ids_are_hex_of_the_asked_length_and_never_repeat():
    ids = [random_hex() for _ in range(5000)] + [random_hex(12) for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:5000])
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids[5000:])
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{10000}", random_hex(5000))  # larger than a block


def test_threads_never_share_bytes():
    seen: list[list[str]] = [[] for _ in range(4)]

    def take(i: int) -> None:
        seen[i].extend(random_hex() for _ in range(2000))
    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for ids in seen for x in ids]
    assert len(set(every)) == len(every)


def test_a_forked_child_does_not_reuse_the_parents_block():
    random_hex()  # the parent holds a block with bytes left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        os.close(read)
        os.write(write, random_hex().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != random_hex()
