"""Every performance figure of the gateway in one run, each against a bare aiohttp proxy.

Usage: python bench/bench_all.py [--quick] [--json] [--seconds S] [--sessions N]
                                 [--profile DIR] [--keep] [--no-wrk] [--only deferred]

One machine, one run. wrk (one thread) is pinned to core 0 with this script; every server
(origin, bare proxy, gateway, anvil) is pinned to core 1. HTTP paths, each measured for S
seconds at 32 connections and S/3 seconds at 1 connection:

  origin directly       GET /v1/flights on the aiohttp origin
  aiohttp hello         GET /hello on the same origin (the reference for /v1/authorize)
  bare proxy            bench/bare_proxy.py in front of the origin: the 1.0x reference
  free route            Tollgate, a 0-unit route of an x402 paygate
  session-paid          Tollgate, hedera-session rail, one session, a distinct
                        Idempotency-Key per request
  x402 deferred         Tollgate, x402-evm, settlement "deferred", a distinct pre-signed
                        payment per request; the settlement worker runs (anvil with 1 s
                        blocks; automine with --quick), settling through the devnet's
                        SettlementBatch contract (--single-settlement: one transaction
                        per payment); timed once the warm-up's payments are settled
  x402 after            the same with settlement "after" (settles in the request; automine)
  /v1/authorize         skipped while the gateway answers 404 there (authorize_hook)

--quick (the smoke test's run): 1 s at 32 and 0.5 s at 1 (with the aiohttp generator,
wrk runs whole seconds), 50 sessions, one automine anvil; its figures mean nothing.
wrk missing: the aiohttp generator in this process does all the runs (harness.run_load).

Per path: req/s at 32, p50/p99 at 32, p50 at 1, the gateway process's CPU (utime + stime
from /proc/<pid>/stat, all threads, background workers included) per request at 32,
and each as a ratio to the bare proxy. Payments, session tokens and idempotency keys are
made before timing and sent one per request (harness.WRK_LUA); a run that uses them all
up stops early and is marked "*".

Also: deferred queue depth each second during the x402 deferred load and a drain window
after it, and settlements/s from it; the session gateway's RSS once N sessions (10,000)
have each been called once; seconds from process start to /readyz 200 (x402 gateway,
no Hedera rails, fresh SQLite); ledger charges/s on SQLite and PostgreSQL
(bench_sessions.run, 32 callers, 64 sessions; PostgreSQL is tests/support's throwaway
server with fsync off).

--only deferred measures just the bare proxy and x402 deferred (with its queue figures):
no Hedera devnet, no other path, no ledger part; for working on that one path.

--profile DIR records py-spy (raw collapsed stacks, all threads) of the gateway during the
session-paid and x402 deferred runs at 32 (and at 1: "<path>_c1.txt"); bench/profile_summary.py reads them.
Wall-clock figures: compare them within one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_configs as cfgs  # noqa: E402
from bench_report import print_table, report  # noqa: E402
from harness import (LOAD_CORE, REPO, Load, cpu_seconds, free_port, pin_self,  # noqa: E402
                     rss_mb, run_load, spawn, stop, thread_cpu_seconds, wait_http,
                     write_header_lines)

OPEN = ("verified", "queued", "settling", "unknown")


class Bench:
    def __init__(self, args, work: Path) -> None:
        self.args, self.work = args, work
        self.paths: dict[str, dict] = {}
        self.extra: dict[str, object] = {}
        self.procs: list[subprocess.Popen] = []

    def wants(self, *names: str) -> bool:
        """Whether `--only` (absent: everything) selects any of these parts."""
        only = self.args.only
        return not only or any(n in only for n in names)

    # -- one HTTP path ---------------------------------------------------------------

    def lines_for(self, concurrency: int, cap: int) -> int:
        """How many distinct requests a paid run may need: what the bare proxy did in the
        same time (nothing should go faster), within `cap`."""
        bare = self.paths.get("bare proxy")
        key = "rps" if concurrency > 1 else "rps_c1"
        rate = bare[key] if bare else 2000.0
        secs = self.args.seconds if concurrency > 1 else self.args.seconds_c1
        return max(50, min(cap, int(rate * secs * 1.2) + 20))

    def measure(self, name: str, url: str, pid: int, make_lines=None, profile: bool = False,
                before_hot=None, after_hot=None) -> None:
        """Warm up, then S s at 32 (CPU of `pid` sampled around it), then S/3 s at 1.
        before_hot/after_hot run just before and after the run at 32 (after_hot may return
        figures to add to the row)."""
        a = self.args
        if not self.wants(name):
            return
        files = {}
        if make_lines is not None:
            for label, n in (("warm", 40), ("c32", self.lines_for(32, a.max_paid)),
                             ("c1", self.lines_for(1, a.max_paid))):
                files[label] = write_header_lines(make_lines(n), self.work, f"{name}-{label}".
                                                  replace(" ", "_").replace("/", "_"))
        run_load(url, concurrency=4, seconds=a.warm, header_file=files.get("warm"), use_wrk=False)
        if before_hot:
            before_hot()
        spy = self.start_profile(name, pid) if profile else None
        cpu0, threads0 = cpu_seconds(pid), thread_cpu_seconds(pid)
        hot = run_load(url, concurrency=32, seconds=a.seconds, header_file=files.get("c32"),
                       use_wrk=a.wrk)
        cpu, threads1 = cpu_seconds(pid) - cpu0, thread_cpu_seconds(pid)
        if spy is not None:
            spy.wait(timeout=a.seconds + 60)
        extra = after_hot() if after_hot else None
        spy = self.start_profile(name + " c1", pid, a.seconds_c1) if profile else None
        one = run_load(url, concurrency=1, seconds=a.seconds_c1, header_file=files.get("c1"),
                       use_wrk=a.wrk and not a.quick)  # wrk runs whole seconds
        if spy is not None:
            spy.wait(timeout=a.seconds_c1 + 60)
        self.paths[name] = self.row(hot, one, cpu)
        if hot.requests:  # by thread (threads that ended during the run are left out)
            per: dict[str, float] = {}
            for tid, (_comm, secs) in threads1.items():
                # (Python does not name its threads for the OS: the event loop's thread
                # is the process's own; the others are the store writer, aiosqlite, ...)
                label = "event loop" if tid == pid else "other threads"
                per[label] = per.get(label, 0.0) + secs - threads0.get(tid, ("", 0.0))[1]
            self.paths[name]["cpu_us_per_req_by_thread"] = {
                k: round(v / hot.requests * 1e6, 1) for k, v in sorted(
                    per.items(), key=lambda kv: -kv[1]) if v > 0}
        if extra:
            self.paths[name].update(extra)
        print(self.line(name), flush=True)
        if len(self.paths[name].get("cpu_us_per_req_by_thread", {})) > 1:
            print("  cpu us/req by thread: " + ", ".join(
                f"{k} {v:.0f}" for k, v in self.paths[name]["cpu_us_per_req_by_thread"].items()),
                flush=True)

    @staticmethod
    def row(hot: Load, one: Load, cpu: float) -> dict:
        return {"rps": round(hot.rps, 1), "p50_ms": round(hot.p50_ms, 3),
                "p99_ms": round(hot.p99_ms, 3), "rps_c1": round(one.rps, 1),
                "p50_c1_ms": round(one.p50_ms, 3),
                "cpu_us_per_req": round(cpu / hot.requests * 1e6, 1) if hot.requests else None,
                "requests": hot.requests, "seconds": round(hot.seconds, 2),
                "non2xx": hot.non2xx + one.non2xx, "socket_errors": hot.errors + one.errors,
                "exhausted": hot.exhausted or one.exhausted, "tool": hot.tool}

    def line(self, name: str) -> str:
        r = self.paths[name]
        if r.get("skipped"):
            return f"{name:<16} skipped: {r['skipped']}"
        return (f"{name:<16} {r['rps']:8.0f} req/s{'*' if r['exhausted'] else ' '} "
                f"p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:8.2f} ms  c1 p50 {r['p50_c1_ms']:6.2f} ms"
                f"  cpu {r['cpu_us_per_req'] or 0:7.0f} us/req  non2xx {r['non2xx']}"
                f" err {r['socket_errors']}")

    def start_profile(self, name: str, pid: int,
                      seconds: float | None = None) -> subprocess.Popen | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.access(spy, os.X_OK):
            print("py-spy not found: no profile", file=sys.stderr)
            return None
        out = Path(self.args.profile) / (name.replace(" ", "_").replace("/", "_") + ".txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            ["taskset", "-c", str(LOAD_CORE), spy, "record", "-p", str(pid), "-d",
             str(max(1, round(seconds or self.args.seconds))), "-r", "200", "--nonblocking", "--threads",
             "-f", "raw", "-o", str(out), *(["--gil"] if self.args.gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- processes -------------------------------------------------------------------

    def server(self, args: list[str], name: str, url: str, env=None) -> tuple:
        log = self.work / f"{name}.log"
        proc = spawn(args, log, env)
        self.procs.append(proc)
        return proc, wait_http(url, proc, log)


def queue_sampler(db: Path, samples: list, stop_evt: threading.Event) -> None:
    """Every second from its start: payments by state, the age of the oldest open one."""
    t0 = time.monotonic()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        while not stop_evt.is_set():
            now = time.time()
            try:
                states = dict(conn.execute("SELECT state, COUNT(*) FROM payments GROUP BY state"))
                oldest = conn.execute(
                    f"SELECT MIN(created_at) FROM payments WHERE state IN "
                    f"({','.join('?' * len(OPEN))})", OPEN).fetchone()[0]
            except sqlite3.Error as exc:
                states, oldest = {"error": str(exc)}, None
            samples.append({"t": round(time.monotonic() - t0, 1), "states": states,
                            "open": sum(v for k, v in states.items() if k in OPEN),
                            "oldest_open_s": round(now - oldest, 1) if oldest else 0.0})
            stop_evt.wait(1.0)
    finally:
        conn.close()


def requirements(url: str) -> dict:
    import httpx

    from chains.x402 import decode_header

    r = httpx.get(url)
    if r.status_code != 402:
        raise RuntimeError(f"expected a 402 from {url}, got {r.status_code}")
    return decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)["accepts"][0]


def run_http(b: Bench, evm_auto, evm_blocks, hedera) -> None:
    a = b.args
    origin_port, proxy_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{origin_port}"
    op, _ = b.server([sys.executable, str(REPO / "bench/harness.py"), "--serve-origin",
                      str(origin_port)], "origin", origin + "/hello")
    pp, _ = b.server([sys.executable, str(REPO / "bench/bare_proxy.py"), str(proxy_port), origin],
                     "bare", f"http://127.0.0.1:{proxy_port}/hello")
    b.measure("origin directly", origin + "/sky/v1/flights", op.pid)
    b.measure("aiohttp hello", origin + "/hello", op.pid)
    b.measure("bare proxy", f"http://127.0.0.1:{proxy_port}/sky/v1/flights", pp.pid)
    stop(pp)

    if b.wants("free route", "/v1/authorize", "x402 deferred", "ready"):
        run_deferred(b, origin, evm_blocks)
    if b.wants("x402 after"):
        run_after(b, origin, evm_auto)
    if b.wants("session-paid", "rss"):
        run_session(b, origin, hedera)
    stop(op)


def run_deferred(b: Bench, origin: str, evm_blocks) -> None:
    """x402 deferred, and the free route, time to ready, /v1/authorize on its gateway."""
    a = b.args
    gp, gw, d, ready = start_gateway(b, "gw-deferred", lambda port, d: cfgs.x402_config(
        evm_blocks, origin, port, d, "deferred", batch=a.batch),
        {cfgs.SETTLER_ENV: evm_blocks.settler.private_key})
    b.extra["ready_s"] = round(ready, 3)
    b.extra["rss_idle_mb"] = round(rss_mb(gp.pid), 1)
    b.measure("free route", gw + "/sky/v1/status", gp.pid)
    authorize_hook(b, gw, d, gp.pid)
    wire = requirements(gw + "/sky/v1/flights")
    signer = [p.private_key for p in evm_blocks.payers]
    samples: list = []
    stop_evt = threading.Event()
    sampler = threading.Thread(target=queue_sampler, daemon=True,
                               args=(d / "tollgate.db", samples, stop_evt))

    def drain() -> dict:
        """Keep sampling after the load until the queue is empty or the window ends."""
        loaded = len(samples)
        deadline = time.monotonic() + a.drain
        while time.monotonic() < deadline and (not samples or samples[-1]["open"] > 0):
            time.sleep(0.25)
        stop_evt.set()
        sampler.join()
        return {"load_samples": loaded}

    def settled_warm_up() -> None:
        """The warm-up's payments settled first: the worker's one-off start (loading the
        signing library on its first settlement) is not counted as per-request CPU."""
        deadline = time.monotonic() + 30
        with sqlite3.connect(f"file:{d / 'tollgate.db'}?mode=ro", uri=True) as conn:
            while time.monotonic() < deadline and conn.execute(
                    f"SELECT COUNT(*) FROM payments WHERE state IN ({','.join('?' * len(OPEN))})",
                    OPEN).fetchone()[0]:
                time.sleep(0.2)
        sampler.start()

    b.measure("x402 deferred", gw + "/sky/v1/flights", gp.pid,
              lambda n: cfgs.signed_lines(signer, wire, n), profile=bool(a.profile),
              before_hot=settled_warm_up, after_hot=drain)
    b.extra["queue"] = samples
    stop(gp)


def run_after(b: Bench, origin: str, evm_auto) -> None:
    """x402 after (automine: each request waits for its own receipt)."""
    gp, gw, d, _ = start_gateway(b, "gw-after", lambda port, d: cfgs.x402_config(
        evm_auto, origin, port, d, "after"), {cfgs.SETTLER_ENV: evm_auto.settler.private_key})
    wire_after = requirements(gw + "/sky/v1/flights")
    payer_keys = [p.private_key for p in evm_auto.payers]
    b.measure("x402 after", gw + "/sky/v1/flights", gp.pid,
              lambda n: cfgs.signed_lines(payer_keys, wire_after, n))
    stop(gp)


def run_session(b: Bench, origin: str, hedera) -> None:
    """Session-paid on one session, then RSS once N sessions have each been called once."""
    from tests.gateway.session_support import approve

    a = b.args

    owner, spender = hedera.account("alice"), hedera.account("spender")
    asyncio.run(approve(hedera, owner, cfgs.SESSION_ALLOWANCE * 10))
    tokens: list[str] = []

    def config(port: int, d: Path) -> str:
        tokens.extend(asyncio.run(cfgs.insert_sessions(
            f"sqlite+aiosqlite:///{d / 'tollgate.db'}", a.sessions, owner.account_id,
            spender.account_id)))
        return cfgs.session_config(hedera, origin, port, d)

    gp, gw, d, ready = start_gateway(b, "gw-session", config,
                                     {cfgs.HEDERA_KEY_ENV: spender.private_key})
    b.extra["ready_hedera_s"] = round(ready, 3)
    url = gw + "/sky/v1/flights"
    b.measure("session-paid", url, gp.pid, lambda n: cfgs.session_lines(tokens[:1], n),
              profile=bool(a.profile))
    if not b.wants("rss"):
        stop(gp)
        return
    touch = write_header_lines(cfgs.session_lines(tokens, len(tokens)), b.work, "touch")
    t = run_load(url, concurrency=32, seconds=a.touch_seconds, header_file=touch, use_wrk=a.wrk)
    with sqlite3.connect(f"file:{d / 'tollgate.db'}?mode=ro", uri=True) as conn:
        called = conn.execute("SELECT COUNT(*) FROM sessions WHERE calls > 0").fetchone()[0]
    b.extra["rss_sessions"] = {"sessions": len(tokens), "called_once": called,
                               "non2xx": t.non2xx, "rss_mb": round(rss_mb(gp.pid), 1)}
    print(f"RSS with {len(tokens)} sessions ({called} called): "
          f"{b.extra['rss_sessions']['rss_mb']} MB", flush=True)
    stop(gp)


def start_gateway(b: Bench, name: str, config, env: dict) -> tuple:
    """`tollgate serve` on a generated config, pinned to the server core. Returns the
    process, its URL, its directory and the seconds from spawn to /readyz 200."""
    port = free_port()
    d = b.work / name
    d.mkdir()
    (d / "tollgate.toml").write_text(config(port, d))
    proc, ready = b.server([sys.executable, "-m", "gateway", "serve", "-c",
                            str(d / "tollgate.toml")], name, f"http://127.0.0.1:{port}/readyz",
                           dict(os.environ, **env))
    return proc, f"http://127.0.0.1:{port}", d, ready


def authorize_hook(b: Bench, gw: str, d: Path, pid: int) -> None:
    """/v1/authorize: a provider's server asking whether a call is paid, here with a
    prepaid token (issued straight into the gateway's store) and a new idempotency key per
    call; each request signed with an operator key (`tollgate keys create`) over its own
    nonce, as `gateway.middleware_client` does. The authorizations are not completed
    (the sweep reverses them later): this is the authorize call alone."""
    if not b.wants("/v1/authorize"):
        return
    from gateway.admin.auth import sign

    made = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "-c",
                           str(d / "tollgate.toml"), "--operator"], capture_output=True,
                          text=True, check=True)
    key = json.loads(made.stdout.strip().splitlines()[-1])
    token = asyncio.run(cfgs.issue_token(f"sqlite+aiosqlite:///{d / 'tollgate.db'}", "sky",
                                         "bench"))
    run = secrets.token_hex(4)
    counter = iter(range(10**9))

    def lines(n: int) -> list[dict[str, str]]:
        ts = str(int(time.time()))  # within the signature window for this run
        out = []
        for _ in range(n):
            body = json.dumps({"paygate": "sky", "method": "GET", "path": "/v1/flights",
                               "headers": {"Authorization": f"Bearer {token}"},
                               "idempotency_key": f"{run}-{next(counter)}",
                               "nonce": secrets.token_hex(8)}, separators=(",", ":"))
            out.append({"@method": "POST", "@body": body, "Content-Type": "application/json",
                        "X-PAY-Key": key["id"], "X-PAY-Timestamp": ts,
                        "X-PAY-Signature": sign(key["secret"], ts, "POST", "/v1/authorize",
                                                body.encode())})
        return out

    b.measure("/v1/authorize", gw + "/v1/authorize", pid, lines, profile=bool(b.args.profile))


def run_ledger(b: Bench) -> None:
    """Charges/s and calls/s through sessions.ledger on SQLite and PostgreSQL (32 callers,
    64 sessions, bench_sessions.run). Unpinned: the store is the subject here."""
    import bench_sessions as ls

    from sessions.ledger import Ledger
    from sessions.records import SessionRecords
    from store.clock import SystemClock
    from store.db import create_engine
    from store.migrations import migrate

    pin_self(set(range(os.cpu_count() or 1)))
    out: dict = {}

    async def one(url: str, mode: str) -> float:
        engine = create_engine(url)
        try:
            await migrate(engine)
            clock = SystemClock()
            return await ls.run(Ledger(engine, clock), SessionRecords(engine, clock),
                                charges=b.args.charges, concurrency=32, sessions=64, mode=mode)
        finally:
            await engine.dispose()

    for backend in ("sqlite", "postgres"):
        with ls.store(backend) as url:
            for mode in ("charge", "call"):
                out[f"{backend} {mode}s/s"] = round(asyncio.run(one(url, mode)), 1)
                print(f"ledger {backend:8} {mode:6} {out[f'{backend} {mode}s/s']:8.0f} /s",
                      flush=True)
    b.extra["ledger"] = out
    pin_self({LOAD_CORE})


def _parts(value: str) -> set[str]:
    parts = {p.strip() for p in value.split(",") if p.strip()}
    if "deferred" in parts:
        parts |= {"bare proxy", "x402 deferred"}
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a few seconds per part")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    ap.add_argument("--seconds", type=float, help="seconds per path at 32 (10; quick 1)")
    ap.add_argument("--sessions", type=int, help="sessions for the RSS figure (10000; quick 50)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the session and deferred runs")
    ap.add_argument("--gil", action="store_true",
                    help="with --profile: sample only the thread holding the GIL (Python "
                         "CPU; without it, waits for the GIL and for the core count too)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs)")
    ap.add_argument("--single-settlement", dest="batch", action="store_false",
                    help="deferred: one transaction per payment, not the batch contract")
    ap.add_argument("--no-wrk", dest="wrk", action="store_false",
                    help="use the aiohttp load generator even when wrk is installed")
    ap.add_argument("--only", type=_parts, default=set(),
                    help="comma-separated parts to run, e.g. 'bare proxy,session-paid' "
                         "(paths by name; also rss, ready, ledger; 'deferred' = the bare "
                         "proxy and x402 deferred); default all")
    a = ap.parse_args()
    q = a.quick
    a.seconds = a.seconds or (1.0 if q else 10.0)
    a.seconds_c1 = 0.5 if q else max(1.0, round(a.seconds / 3))
    a.sessions = a.sessions or (50 if q else 10_000)
    a.max_paid = 150 if q else 8000  # signed payments per timed run, at most (quick: inline)
    a.drain = 1.0 if q else 20.0
    a.warm = 0.3 if q else 1.0  # untimed warm-up per path (aiohttp generator)
    a.touch_seconds = 5.0 if q else 180.0
    a.charges = 200 if q else 2000
    if a.wrk and not shutil.which("wrk"):
        print("wrk not found: using the aiohttp load generator", file=sys.stderr)
        a.wrk = False
    pin_self({LOAD_CORE})

    from chains.evm.devnet import EvmDevnet
    from chains.hedera.devnet import HederaDevnet

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    b = Bench(a, work)
    devnets: list = []
    hedera = Future()
    try:
        # anvil dies with the thread that started it (PR_SET_PDEATHSIG): start both here;
        # the Hedera devnet (servers in this process) comes up alongside in a thread.
        with ThreadPoolExecutor(1) as pool:
            hedera = pool.submit(lambda: HederaDevnet().start() if b.wants("session-paid", "rss")
                                 else None)
            try:
                devnets.append(EvmDevnet.start(payers=8))
                if not q:  # --quick settles deferred payments on the automine chain too
                    devnets.append(EvmDevnet.start(payers=8, block_time=1))
            finally:
                hedera = hedera.result()
        for net in devnets:  # anvil is a server: the server core
            if net._proc is not None and (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(net._proc.pid, {1})
        print(f"wrk: {a.wrk}; {a.seconds:g} s at 32, {a.seconds_c1:g} s at 1 per path; "
              f"deferred anvil block time: {devnets[-1].block_time or 'automine'}", flush=True)
        run_http(b, devnets[0], devnets[-1], hedera)
        if b.wants("ledger"):
            run_ledger(b)
        res = report(b)
        print_table(res)
        if a.json:
            print(json.dumps(res, indent=1, default=str))
    finally:
        for p in reversed(b.procs):
            stop(p)
        for net in reversed(devnets):
            net.stop()
        if hedera is not None and not isinstance(hedera, Future):
            hedera.stop()
        if a.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
