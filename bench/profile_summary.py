"""Summarise py-spy raw (collapsed) stacks of the gateway: time by layer, top functions.

Usage: python bench/profile_summary.py PROFILE.txt [...] [--top 15]

Input: `py-spy record --threads -f raw` output (bench_all.py --profile DIR writes one file
per path). Each line is `frame;frame;...;leaf COUNT`, root first, frames
`function (file:line)`, the first frame naming the thread when --threads was given.

Waiting samples are left out (py-spy --nonblocking reports them as active): the event
loop in epoll, aiosqlite's worker blocked on its queue, threading waits. Layers of the
rest, each sample counted once, first rule that applies:
  no Python frame       only the thread's own frame (C code, the GIL changing hands)
  aiosqlite hop         call_soon_threadsafe / the loop's self-pipe (either thread), or
                        aiosqlite's own frames on the event loop (queue put, await): the
                        cost of handing each statement to the worker and its result back
  aiosqlite worker      any other sample of aiosqlite's worker thread: sqlite3's C code
                        (statement, commit) runs there, shown at aiosqlite's call line
  Both aiosqlite layers include waits for the GIL (the worker needs it to hand a result
  back; the default switch interval is 5 ms), so they are wall time, not pure CPU.
  SQLAlchemy compile    innermost non-stdlib frame in SQLAlchemy, stack through
                        sql/compiler.py or sql/cache_key.py
  SQLAlchemy execute    other SQLAlchemy (engine, pool, result rows, greenlet bridge)
  socket I/O            the leaf is an asyncio transport reading or writing a socket
  asyncio event loop    the leaf is other asyncio machinery (task steps, callbacks)
  aiohttp, coincurve..  the package of the innermost non-stdlib frame
  Tollgate              innermost non-stdlib frame in gateway/, sessions/, chains/, store/
  logging               the stack passes through the stdlib logging package
  event loop / stdlib   only stdlib frames (asyncio's loop, selectors, ...)
Stdlib frames are charged to their nearest non-stdlib caller, so json.dumps called by
Tollgate counts as Tollgate. "Self" is by the leaf frame; "inclusive" counts each
function once per sample.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]+?)(?::(?P<line>\d+))?\)$")
TOLLGATE = {"gateway", "sessions", "chains", "store"}
AIOHTTP = {"aiohttp", "yarl", "multidict", "aiosignal", "frozenlist", "propcache"}
HOP = {"BaseSelectorEventLoop._write_to_self", "BaseSelectorEventLoop._read_from_self",
       "BaseEventLoop.call_soon_threadsafe"}


def _idle_lines() -> set[tuple[str, int]]:
    """(function, line) leaves that are a thread waiting, not working: the worker thread
    of aiosqlite blocked on its queue. py-spy --nonblocking samples them as active."""
    out = set()
    try:
        import aiosqlite.core as core
        import inspect

        src, start = inspect.getsourcelines(core._connection_worker_thread)
        out |= {("_connection_worker_thread", start + i) for i, ln in enumerate(src)
                if "tx.get()" in ln}
    except Exception:  # the summary still works, with the waits counted as aiosqlite work
        pass
    return out


IDLE_LINES = _idle_lines()


def parse(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def where(frame: str) -> tuple[str, str, int]:
    """(function, file, line) of one frame; file '' for thread/process frames."""
    m = FRAME.match(frame)
    return (m["fn"], m["file"], int(m["line"] or 0)) if m else (frame, "", 0)


def package(file: str) -> str | None:
    """'tollgate', a third-party package's name, or None for the standard library.
    py-spy names files relative to their sys.path entry (aiohttp/web.py, asyncio/...)."""
    top = file.split("/", 1)[0].removesuffix(".py")
    if top.startswith("<") or top in sys.stdlib_module_names:
        return None
    return "tollgate" if top in TOLLGATE else top


def idle(stack: list[str]) -> bool:
    fn, file, line = where(stack[-1])
    return (fn == "EpollSelector.select" or (fn, line) in IDLE_LINES
            or (file == "threading.py" and fn in ("Condition.wait", "Event.wait")))


def layer(stack: list[str]) -> str:
    frames = [where(f) for f in stack]
    fns = {fn for fn, _, _ in frames}
    files = [file for _, file, _ in frames if file]
    if not files:
        return "no Python frame (C code, GIL hand-over)"
    if fns & HOP or (files[-1].startswith("aiosqlite/") and "_connection_worker_thread" not in fns):
        return "aiosqlite hop (queue put, call_soon_threadsafe, self-pipe; GIL waits)"
    if "_connection_worker_thread" in fns:
        return "aiosqlite worker (sqlite3 C: statements, commit; GIL waits)"
    logging_ = any(f.startswith("logging/") for f in files)
    leaf_fn, leaf_file, _ = frames[-1]
    if leaf_file.startswith(("asyncio/", "selectors.py")) and not logging_:
        if "Transport" in leaf_fn or "sock_" in leaf_fn:
            return "socket I/O (asyncio transports)"
        return "asyncio event loop (task steps, callbacks)"
    for file in reversed(files):
        pkg = package(file)
        if pkg is None:
            continue
        if logging_ and pkg in AIOHTTP | {"tollgate"}:
            return "logging"
        if pkg == "sqlalchemy":
            return ("SQLAlchemy compile (+cache key)" if any(
                f.startswith(("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key.py"))
                for f in files) else "SQLAlchemy execute/result/pool")
        if pkg in AIOHTTP:
            return "aiohttp (+yarl, multidict)"
        if pkg == "tollgate":
            return "Tollgate"
        return pkg if pkg.isidentifier() else "other"
    return "logging" if logging_ else "asyncio event loop / stdlib"


def short(frame: str) -> str:
    fn, file, _ = where(frame)
    return f"{fn} ({file})" if file else fn


def summarise(path: Path, top: int) -> str:
    every = parse(path)
    samples = [(st, c) for st, c in every if not idle(st)]
    waits = sum(c for _, c in every) - sum(c for _, c in samples)
    total = sum(c for _, c in samples) or 1
    layers: Counter = Counter()
    self_: Counter = Counter()
    incl: Counter = Counter()
    for stack, count in samples:
        layers[layer(stack)] += count
        self_[short(stack[-1])] += count
        for name in {short(f) for f in stack[1:] if where(f)[1]}:
            incl[name] += count
    lines = [f"### {path.stem}: {total} busy samples ({waits} waiting samples left out)", "",
             "| layer | share of busy samples |", "|---|---:|"]
    lines += [f"| {k} | {v / total:.1%} |" for k, v in layers.most_common()]
    lines += ["", f"Top {top} functions by self time:", "", "| function | self |", "|---|---:|"]
    lines += [f"| `{k}` | {v / total:.1%} |" for k, v in self_.most_common(top)]
    skip = ("_run_once", "run_forever", "run_until_complete", "_run (stdlib", "run_app",
            "<module>", "main (", "_run_module", "_run_code", "cmd_serve", "(threading.py)",
            "(gateway/cli.py)", "(gateway/__main__.py)")
    lines += ["", f"Top {top} functions by inclusive time (event-loop entry frames left out):",
              "", "| function | inclusive |", "|---|---:|"]
    lines += [f"| `{k}` | {v / total:.1%} |" for k, v in
              [(k, v) for k, v in incl.most_common() if not any(s in k for s in skip)][:top]]
    lines += ["", f"Top {top} Tollgate functions by inclusive time (where each request's "
              "work starts):", "", "| function | inclusive |", "|---|---:|"]
    lines += [f"| `{k}` | {v / total:.1%} |" for k, v in
              [(k, v) for k, v in incl.most_common()
               if package(k.rsplit("(", 1)[-1]) == "tollgate"
               and not any(x in k for x in skip)][:top]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print("\n\n".join(summarise(f, a.top) for f in a.files))


if __name__ == "__main__":
    main()
