"""Summarise py-spy raw (collapsed) stacks of the gateway: time by layer, top functions.

Usage: python bench/profile_summary.py PROFILE.txt [...] [--top 15]

Input: `py-spy record --threads -f raw` output (bench_all.py --profile DIR writes one file
per path). Each line is `frame;frame;...;leaf COUNT`, root first, frames
`function (file:line)`, the first frame naming the thread when --threads was given.

Layers (each sample counted once):
  aiosqlite thread      any sample of aiosqlite's worker thread (the statement itself runs
                        there: sqlite3 C code shows as aiosqlite's _execute)
  SQLAlchemy compile    the innermost attributable frame is in SQLAlchemy and the stack
                        passes through sqlalchemy/sql/compiler.py
  SQLAlchemy execute    other SQLAlchemy frames (engine, pool, result, greenlet bridge)
  asyncpg, aiohttp ...  the third-party package of the innermost non-stdlib frame
  Tollgate              innermost non-stdlib frame in gateway/, sessions/, chains/, store/
  logging               the stack passes through the stdlib logging package
  event loop / stdlib   only stdlib frames (asyncio's loop, selectors, ...)
Stdlib frames are charged to their nearest non-stdlib caller, so json.dumps called by
Tollgate counts as Tollgate. "Self" below is by the leaf frame; "inclusive" counts each
function once per sample.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")
TOLLGATE_DIRS = ("gateway/", "sessions/", "chains/", "store/")


def parse(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def where(frame: str) -> tuple[str, str]:
    """(function, file) of one frame; file '' for thread/process frames."""
    m = FRAME.match(frame)
    return (m["fn"], m["file"]) if m else (frame, "")


def package(file: str) -> str | None:
    """Third-party package name, 'tollgate', or None for the standard library."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if any(f"/{d}" in file or file.startswith(d) for d in TOLLGATE_DIRS) and "python3." not in file:
        return "tollgate"
    return None


def layer(stack: list[str]) -> str:
    files = [where(f)[1] for f in stack]
    if any("aiosqlite/core.py" in f for f in files[:4]) and any(
            where(f)[0] == "run" and "aiosqlite/core.py" in where(f)[1] for f in stack):
        return "aiosqlite thread"
    for fn_file in reversed(files):
        if not fn_file:
            continue
        pkg = package(fn_file)
        if pkg is None:
            continue
        if pkg == "sqlalchemy":
            return ("SQLAlchemy compile" if any("sqlalchemy/sql/compiler.py" in f for f in files)
                    else "SQLAlchemy execute")
        if pkg in ("aiohttp", "yarl", "multidict", "aiosignal", "frozenlist", "propcache"):
            return "logging" if any("/logging/" in f for f in files) else "aiohttp"
        if pkg == "tollgate":
            return "logging" if any("/logging/" in f for f in files) else "Tollgate"
        return pkg
    return "logging" if any("/logging/" in f for f in files) else "event loop / stdlib"


def short(frame: str) -> str:
    fn, file = where(frame)
    if not file:
        return fn
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/lib/python3." in file:
        file = "stdlib/" + file.split("/lib/python3.", 1)[1].split("/", 1)[1]
    else:
        for d in TOLLGATE_DIRS:
            if f"/{d}" in file:
                file = d + file.split(f"/{d}", 1)[1]
                break
    return f"{fn} ({file})"


def summarise(path: Path, top: int) -> str:
    samples = parse(path)
    total = sum(c for _, c in samples) or 1
    layers: Counter = Counter()
    self_: Counter = Counter()
    incl: Counter = Counter()
    for stack, count in samples:
        layers[layer(stack)] += count
        self_[short(stack[-1])] += count
        for name in {short(f) for f in stack[1:] if where(f)[1]}:
            incl[name] += count
    lines = [f"### {path.stem}: {total} samples", "", "| layer | share |", "|---|---:|"]
    lines += [f"| {k} | {v / total:.1%} |" for k, v in layers.most_common()]
    lines += ["", f"Top {top} functions by self time:", "", "| function | self |", "|---|---:|"]
    lines += [f"| `{k}` | {v / total:.1%} |" for k, v in self_.most_common(top)]
    skip = ("_run_once", "run_forever", "run_until_complete", "_run (stdlib", "run_app",
            "<module>", "main (", "_run_module", "_run_code", "cmd_serve", "run (stdlib")
    lines += ["", f"Top {top} functions by inclusive time (event-loop entry frames left out):",
              "", "| function | inclusive |", "|---|---:|"]
    lines += [f"| `{k}` | {v / total:.1%} |" for k, v in
              [(k, v) for k, v in incl.most_common() if not any(s in k for s in skip)][:top]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print("\n\n".join(summarise(f, a.top) for f in a.files))


if __name__ == "__main__":
    main()
