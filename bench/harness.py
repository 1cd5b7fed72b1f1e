"""Building blocks of bench_all.py: pinned server processes, their CPU and memory, the
origin, and the load generator (wrk with per-request headers, or an aiohttp fallback).

Per-request headers: a header file holds one line per request, each line the request's
headers as `Name: value` fields separated by TAB (the pseudo-fields `@method` and `@body`
set the request's method and body; the body then may hold no TAB or newline). wrk reads it through WRK_LUA (one wrk
thread, so one Lua state walks the file once) and stops sending when the lines run out
(the request that finds them gone repeats the last line: at most one replay). Load.exhausted
then says so, and as wrk still reports the whole -d duration, the run's time is estimated
as mean latency x requests / connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_CORE, SERVER_CORE = 0, 1

WRK_LUA = r"""
local reqs, n, i, plain, threads = {}, 0, 0, nil, {}
exhausted = 0  -- global: done() reads it through thread:get
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  local path, file = args[1], args[2]
  plain = wrk.format(nil, path)
  if file ~= nil and file ~= "" then
    for line in io.lines(file) do
      local h, method, body = {}, nil, nil
      for field in string.gmatch(line, "[^\t]+") do
        local k, v = string.match(field, "^([^:]+):%s*(.*)$")
        if k == "@method" then method = v
        elseif k == "@body" then body = v
        else h[k] = v end
      end
      n = n + 1
      reqs[n] = wrk.format(method, path, h, body)
    end
  end
end
function request()
  if n == 0 then return plain end
  i = i + 1
  if i > n then
    exhausted = 1
    wrk.thread:stop()
    i = n
  end
  return reqs[i]
end
function done(summary, latency, requests)
  local e, ex = summary.errors, 0
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then ex = 1 end
  end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %f, "exhausted": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, ex))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin_self(cores: set[int]) -> None:
    """Pin this process (and what it starts from now on) to `cores`, where possible."""
    try:
        os.sched_setaffinity(0, cores & set(range(os.cpu_count() or 1)) or {0})
    except OSError:
        pass


# -- processes --------------------------------------------------------------------------


def spawn(args: list[str], log: Path, env: dict | None = None,
          core: int | None = SERVER_CORE) -> subprocess.Popen:
    """Start a server process, pinned to `core` with taskset (which execs: same pid)."""
    if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > core:
        args = ["taskset", "-c", str(core), *args]
    return subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> float:
    """Poll `url` until it answers 200; returns the seconds it took. Raises on exit."""
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, user + system CPU seconds) of every live thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the origin (own process) ------------------------------------------------------------


def serve_origin(port: int) -> None:
    """A small JSON API plus GET /hello (the aiohttp "hello" reference handler)."""
    from aiohttp import web

    body = b'{"flights": [{"from": "ZRH", "to": "LIS", "price": 120}]}'

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, world")

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- load ----------------------------------------------------------------------------------


@dataclass
class Load:
    """One timed run against one URL."""

    requests: int
    seconds: float
    non2xx: int
    errors: int
    p50_ms: float
    p99_ms: float
    tool: str
    exhausted: bool = False  # stopped early: the per-request header lines ran out

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_header_lines(lines: list[dict[str, str]], directory: Path, name: str) -> Path:
    path = directory / f"{name}.headers"
    with open(path, "w") as f:
        for headers in lines:
            f.write("\t".join(f"{k}: {v}" for k, v in headers.items()) + "\n")
    return path


def run_load(url: str, *, concurrency: int, seconds: float, header_file: Path | None = None,
             use_wrk: bool = True) -> Load:
    """Load `url` for `seconds` with `concurrency` connections: wrk on LOAD_CORE when it is
    installed (and use_wrk), otherwise the aiohttp generator in this process."""
    wrk = shutil.which("wrk") if use_wrk else None
    if wrk is None:
        return asyncio.run(_aiohttp_load(url, concurrency, seconds, header_file))
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        script = f.name
    try:
        cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "-s", script, f"{parts.scheme}://{parts.netloc}/", "--", path,
               str(header_file or "")]
        if shutil.which("taskset") and (os.cpu_count() or 1) > LOAD_CORE:
            cmd = ["taskset", "-c", str(LOAD_CORE), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    finally:
        os.unlink(script)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRKJSON "):])
    secs = d["duration_us"] / 1e6
    if d["exhausted"]:
        # wrk reports the full -d duration even when the script stopped early: estimate
        # the busy time of a closed loop (every connection always waiting on a request)
        secs = min(secs, d["mean_us"] * d["requests"] / concurrency / 1e6) or secs
    return Load(d["requests"], secs, d["non2xx"], d["socket_errors"], d["p50_us"] / 1000,
                d["p99_us"] / 1000, f"wrk c{concurrency}", exhausted=bool(d["exhausted"]))


async def _aiohttp_load(url: str, concurrency: int, seconds: float,
                        header_file: Path | None) -> Load:
    import aiohttp

    lines = None
    if header_file is not None:
        lines = iter([dict(f.split(": ", 1) for f in ln.rstrip("\n").split("\t"))
                      for ln in open(header_file)])
    latencies: list[float] = []
    bad = errors = 0
    exhausted = False
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker() -> None:
            nonlocal bad, errors, exhausted
            while time.perf_counter() < deadline:
                headers = {}
                if lines is not None:
                    headers = next(lines, None)
                    if headers is None:
                        exhausted = True
                        return
                headers = dict(headers)
                method = headers.pop("@method", "GET")
                data = headers.pop("@body", None)
                t0 = time.perf_counter()
                try:
                    async with http.request(method, url, headers=headers, data=data) as r:
                        await r.read()
                        if not 200 <= r.status < 400:
                            bad += 1
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 \
            if latencies else float("nan")

    return Load(len(latencies), elapsed, bad, errors, pct(50), pct(99),
                f"aiohttp c{concurrency}", exhausted)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve-origin":
    serve_origin(int(sys.argv[2]))
