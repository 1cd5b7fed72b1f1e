"""The proxy's own overhead, side by side with a bare aiohttp proxy: free-route
throughput, latency at concurrency 1, gateway CPU per request, time to ready, and RSS.

Usage: python bench/bench_proxy.py [--seconds S] [--rounds N] [--bare PATH]
                                   [--body BYTES] [--mode request|hmac] [--profile FILE]
                                   [--compare SOURCE_TREE]

Processes: an aiohttp origin, the bare proxy (`--bare`, bench/bare_proxy.py by default)
and `python -m gateway serve` with one free paygate (default_units = 0, no rails, fresh
SQLite, origin auth `--mode`, so every request is signed for the origin). Servers are
pinned to core 1, wrk (one thread) to core 0 with taskset. Each round measures every
path at 32 connections for S seconds and at 1 connection for S/2 seconds; the figures
are the median over the rounds. CPU per request is the server process's utime + stime
(/proc/<pid>/stat, all threads) over the 32-connection run divided by its requests.
`--body` sends a POST body of that many bytes instead of a GET (the body-hashing path).
Time to ready: process start to the first /readyz 200, polled every 5 ms (median of 5).
`--compare` also runs the gateway of another source tree (an older commit, exported)
in the same rounds, as "free route (compare)", for before/after figures from one run.
`--profile FILE` records py-spy (raw, all threads) of the gateway during one 32-connection
run instead of the measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_CORE, SERVER_CORE = "0", "1"

WRK_LUA = r"""
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local n = tonumber(os.getenv("BENCH_BODY") or "0")
if n > 0 then
  wrk.body = string.rep("x", n)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""

ORIGIN = r"""
import sys
from aiohttp import web
body = b'{"flights": [{"from": "ZRH", "to": "LIS", "price": 120}]}'
async def handle(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(args: list[str], core: str) -> list[str]:
    return ["taskset", "-c", core, *args] if shutil.which("taskset") else args


def spawn(args: list[str], log: Path, env: dict | None = None,
          cwd: Path = REPO) -> subprocess.Popen:
    # `python -m` puts the working directory first on sys.path: it picks the source tree
    return subprocess.Popen(pinned(args, SERVER_CORE), cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_200(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} not ready within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, conns: int, seconds: float, body: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
    env = dict(os.environ, BENCH_METHOD="POST" if body else "GET", BENCH_BODY=str(body))
    try:
        out = subprocess.run(pinned(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
                                     "-s", f.name, url], LOAD_CORE),
                             capture_output=True, text=True, env=env, timeout=seconds + 60)
    finally:
        os.unlink(f.name)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[8:])


def gateway_config(work: Path, port: int, origin: str, mode: str) -> Path:
    path = work / "tollgate.toml"
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
allow_private_targets = true

[database]
url = "sqlite+aiosqlite:///{work / 'tollgate.db'}"
master_key_env = "BENCH_PROXY_UNSET_MASTER_KEY"
master_key_file = "{work / 'master.key'}"

[[paygates]]
id = "free"
prefix = "/free"
target = "{origin}"
default_units = 0

[paygates.origin_auth]
mode = "{mode}"
""")
    return path


def gateway_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "-c", str(config)]


def measure(name: str, url: str, pid: int, args, out: dict) -> None:
    wrk(url, 32, 1, args.body)  # warm the pools
    c0 = cpu_seconds(pid)
    r32 = wrk(url, 32, args.seconds, args.body)
    cpu = cpu_seconds(pid) - c0
    r1 = wrk(url, 1, max(1, args.seconds / 2), args.body)
    bad = r32["non2xx"] + r32["errors"] + r1["non2xx"] + r1["errors"]
    if bad:
        raise RuntimeError(f"{name}: {bad} failed requests")
    row = out.setdefault(name, {"rps": [], "p50_1": [], "p99_32": [], "cpu_us": []})
    row["rps"].append(r32["requests"] / (r32["duration_us"] / 1e6))
    row["p50_1"].append(r1["p50_us"] / 1000)
    row["p99_32"].append(r32["p99_us"] / 1000)
    row["cpu_us"].append(cpu / r32["requests"] * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare", default=str(REPO / "bench" / "bare_proxy.py"))
    ap.add_argument("--body", type=int, default=0)
    ap.add_argument("--mode", default="request")
    ap.add_argument("--profile")
    ap.add_argument("--ready-runs", type=int, default=5)
    ap.add_argument("--compare")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    # Start-up is measured with compiled bytecode, as an installed gateway has it: cached
    # under a scratch prefix when the environment turns bytecode writing off.
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "bench-proxy-pycache")
    procs: list[subprocess.Popen] = []
    paths: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            oport, bport, gport = free_port(), free_port(), free_port()
            origin = f"http://127.0.0.1:{oport}"
            procs.append(p := spawn([sys.executable, "-c", ORIGIN, str(oport)], work / "o.log"))
            wait_200(origin + "/", p)
            procs.append(bare := spawn([sys.executable, args.bare, str(bport), origin],
                                       work / "b.log"))
            wait_200(f"http://127.0.0.1:{bport}/v1/flights", bare)
            config = gateway_config(work, gport, origin, args.mode)
            procs.append(gw := spawn(gateway_cmd(config), work / "g.log", env))
            wait_200(f"http://127.0.0.1:{gport}/readyz", gw)
            gurl = f"http://127.0.0.1:{gport}/free/v1/flights"
            if args.compare:
                cwork = work / "compare"
                cwork.mkdir()
                cport = free_port()
                cenv = dict(env, PYTHONPATH=str(Path(args.compare).resolve()))
                procs.append(cgw := spawn(gateway_cmd(gateway_config(cwork, cport, origin,
                                                                     args.mode)),
                                          work / "c.log", cenv, Path(args.compare).resolve()))
                wait_200(f"http://127.0.0.1:{cport}/readyz", cgw)
            if args.profile:
                wrk(gurl, 32, 1, args.body)
                spy = subprocess.Popen(pinned([str(Path(sys.executable).parent / "py-spy"),
                                               "record", "-f", "raw", "-g", "-r", "200",
                                               "-o", args.profile, "--pid", str(gw.pid),
                                               "-d", str(int(args.seconds))], LOAD_CORE))
                time.sleep(0.5)
                wrk(gurl, 32, args.seconds - 1, args.body)
                spy.wait()
                return
            for _ in range(args.rounds):
                measure("bare proxy", f"http://127.0.0.1:{bport}/v1/flights", bare.pid, args,
                        paths)
                measure("free route", gurl, gw.pid, args, paths)
                if args.compare:
                    measure("free route (compare)", f"http://127.0.0.1:{cport}/free/v1/flights",
                            cgw.pid, args, paths)
            rss = rss_mb(gw.pid)
            stop(gw)
            ready = []
            for i in range(args.ready_runs + 1):  # the first run only warms the caches
                (work / "tollgate.db").unlink(missing_ok=True)
                p = spawn(gateway_cmd(config), work / f"r{i}.log", env)
                try:
                    took = wait_200(f"http://127.0.0.1:{gport}/readyz", p)
                    if i:
                        ready.append(took)
                finally:
                    stop(p)
        finally:
            for p in procs:
                stop(p)
    print(f"start to ready (fresh SQLite): median {statistics.median(ready or [0]):.2f} s of "
          f"{[round(x, 2) for x in ready]}; gateway RSS after the runs: {rss:.0f} MB")
    if not paths:
        return
    med = {n: {k: statistics.median(v) for k, v in row.items()} for n, row in paths.items()}
    bare_row, free = med["bare proxy"], med["free route"]
    print(f"{'path':20} {'req/s c32':>10} {'x bare':>7} {'p50 c1 ms':>10} {'p99 c32 ms':>11} "
          f"{'CPU us/req':>11}")
    for n, r in med.items():
        print(f"{n:20} {r['rps']:10,.0f} {r['rps'] / bare_row['rps']:7.2f} {r['p50_1']:10.3f} "
              f"{r['p99_32']:11.2f} {r['cpu_us']:11.0f}")
    print(f"added p50 at c1: {free['p50_1'] - bare_row['p50_1']:.3f} ms")
    print("raw:", json.dumps(paths))


if __name__ == "__main__":
    main()
