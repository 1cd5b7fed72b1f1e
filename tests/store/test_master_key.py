"""The master key file under a concurrent first start: real processes, started together
on a barrier, each loading a key file that does not exist yet."""

from __future__ import annotations

import multiprocessing
import os
import stat

from cryptography.fernet import Fernet

from store.crypto import SecretBox, load_master_key

UNSET_ENV = "TOLLGATE_TEST_UNSET_MASTER_KEY"
PROCESSES = 8
ROUNDS = 15


def _load_in_rounds(directory: str, rounds: int, barrier, results) -> None:
    """One process: for each round, wait for every other process, then load the key."""
    os.environ.pop(UNSET_ENV, None)
    for r in range(rounds):
        barrier.wait()
        try:
            box = load_master_key(UNSET_ENV, os.path.join(directory, f"round-{r}", "master.key"))
            results.put((r, "ok", box.seal(f"from {os.getpid()}")))
        except Exception as exc:  # reported to the parent, which fails the test with it
            results.put((r, "error", repr(exc)))


def test_concurrent_first_start_creates_one_key_everyone_shares(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_load_in_rounds, args=(str(tmp_path), ROUNDS, barrier, results))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    errors = [o for o in outcomes if o[1] != "ok"]
    assert not errors, errors
    for r in range(ROUNDS):
        directory = tmp_path / f"round-{r}"
        path = directory / "master.key"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.listdir(directory) == ["master.key"]  # no temporary files left behind
        on_disk = SecretBox(path.read_bytes().strip())
        sealed = [o[2] for o in outcomes if o[0] == r]
        assert len(sealed) == PROCESSES
        # Every process sealed with the key that is on disk (opening raises otherwise):
        # one key, shared by all.
        assert len({on_disk.open(s) for s in sealed}) == PROCESSES


def test_an_existing_key_file_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET_ENV, raising=False)
    key = Fernet.generate_key()
    path = tmp_path / "master.key"
    path.write_bytes(key + b"\n")
    box = load_master_key(UNSET_ENV, path)
    assert SecretBox(key).open(box.seal("x")) == "x"
    assert path.read_bytes() == key + b"\n"
