"""Gateway throughput and latency on loopback: free route, paid x402 (deferred), replays.

Usage: python bench/bench_gateway.py [--requests N] [--paid N] [--replays N] [--concurrency C]

Starts a local anvil chain with the test USDC (chains.evm.devnet.EvmDevnet), a small
aiohttp origin (a subprocess of this script) and the real gateway (`python -m gateway
serve -c <generated config>`, SQLite store, access log on as in production), then
measures with a bounded number of requests each:

  (a) free route    GET /sky/v1/status (0 units) through the gateway vs the origin directly
  (b) paid, deferred GET /sky/v1/flights with N distinct pre-signed x402 payments; the
                    settlement worker is parked (settlement_interval_seconds = 3600), so the
                    figure is the gateway's decode + verify + chain-state read + claim +
                    forward, not anvil's mining
  (c) replays       one already-served payment sent again N times (stored response)

The load generator is `wrk` when installed and the request needs no per-request header
(free routes), otherwise an aiohttp client loop with C concurrent workers on one
connection pool. Load generator, origin and gateway are separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PRICE = 1000  # atomic units (0.001 of the 6-decimal test USDC)
SETTLER_ENV = "TOLLGATE_BENCH_SETTLER_KEY"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the origin (runs in its own process) ---------------------------------------------


def serve_origin(port: int) -> None:
    from aiohttp import web

    body = b'{"flights": [{"from": "ZRH", "to": "LIS", "price": 120}]}'

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- processes -----------------------------------------------------------------------


def config_toml(devnet, origin_url: str, port: int, work: Path) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
allow_private_targets = true
settlement_interval_seconds = 3600

[database]
url = "sqlite+aiosqlite:///{work / 'tollgate.db'}"
master_key_env = "TOLLGATE_BENCH_UNSET_MASTER_KEY"
master_key_file = "{work / 'master.key'}"

[assets.usdc]
type = "eip3009"
network = "{devnet.network}"
address = "{devnet.token_address}"
decimals = 6
eip712_name = "{devnet.token_name}"
eip712_version = "{devnet.token_version}"

[evm."{devnet.network}"]
rpc_url = "{devnet.rpc_url}"
settler_key_env = "{SETTLER_ENV}"
deferred_exposure_limit = {10**15}

[[paygates]]
id = "sky"
prefix = "/sky"
target = "{origin_url}"
rails = ["x402-evm"]
prices = {{ usdc = "0.001" }}
pay_to = {{ evm = "{devnet.merchant.address}" }}
settlement = "deferred"

[[paygates.rules]]
method = "GET"
path = "/v1/status"
units = 0
"""


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited:\n{log.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {START_TIMEOUT:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -----------------------------------------------------------------------------


class Result:
    def __init__(self, name: str, latencies: list[float], elapsed: float, statuses: dict,
                 tool: str) -> None:
        self.name, self.latencies, self.elapsed = name, sorted(latencies), elapsed
        self.statuses, self.tool = statuses, tool

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed

    def pct(self, p: float) -> float:
        xs = self.latencies
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

    def line(self) -> str:
        return (f"{self.name:<34} {self.rps:9.0f} req/s   p50 {self.pct(50):7.2f} ms   "
                f"p99 {self.pct(99):7.2f} ms   n={len(self.latencies)} {self.statuses} [{self.tool}]")


async def client_loop(name: str, url: str, headers_list: list[dict], concurrency: int,
                      expect: int) -> Result:
    """Send one request per entry of headers_list with `concurrency` workers."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    it = iter(headers_list)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def worker() -> None:
            for headers in it:
                t0 = time.perf_counter()
                async with http.get(url, headers=headers) as r:
                    await r.read()
                latencies.append(time.perf_counter() - t0)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        async with http.get(url) as r:  # warm-up (unpaid or free: nothing is consumed)
            await r.read()
        t0 = time.perf_counter()
        async with asyncio.timeout(600):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if set(statuses) != {expect}:
        print(f"warning: {name}: statuses {statuses}, expected all {expect}", file=sys.stderr)
    return Result(name, latencies, elapsed, statuses, f"aiohttp x{concurrency}")


def wrk_run(url: str, concurrency: int) -> None:
    """When wrk is installed, also print its view of a free route (5 s, time-based)."""
    wrk = shutil.which("wrk")
    if wrk is not None:
        out = subprocess.run([wrk, "-t2", f"-c{concurrency}", "-d5s", "--latency", url],
                             capture_output=True, text=True, timeout=60).stdout
        print(out)


# -- payments -------------------------------------------------------------------------


def signed_headers(devnet, req, count: int) -> list[dict]:
    from chains.evm.codec import build_exact_evm_payload
    from chains.x402 import encode_header

    now = int(time.time())
    out = []
    accepted = req.to_wire()
    for i in range(count):
        payer = devnet.payers[i % len(devnet.payers)]
        payload = build_exact_evm_payload(payer.private_key, req, now=now,
                                          valid_before=now + 3600)
        out.append({"PAYMENT-SIGNATURE": encode_header(
            {"x402Version": 2, "accepted": accepted, "payload": payload.to_wire(),
             "extensions": {}})})
    return out


async def run(args) -> None:
    import httpx

    from chains.evm.devnet import EvmDevnet
    from chains.x402 import PaymentRequirements, decode_header

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    devnet = EvmDevnet.start(payers=4)
    procs: list[subprocess.Popen] = []
    try:
        origin_port, gw_port = free_port(), free_port()
        origin_url = f"http://127.0.0.1:{origin_port}"
        gw_url = f"http://127.0.0.1:{gw_port}"
        procs.append(spawn([sys.executable, __file__, "--serve-origin", str(origin_port)],
                           work / "origin.log"))
        wait_http(origin_url + "/", procs[-1], work / "origin.log")
        (work / "tollgate.toml").write_text(config_toml(devnet, origin_url, gw_port, work))
        env = dict(os.environ, **{SETTLER_ENV: devnet.settler.private_key})
        procs.append(spawn([sys.executable, "-m", "gateway", "serve", "-c",
                            str(work / "tollgate.toml")], work / "gateway.log", env))
        wait_http(gw_url + "/healthz", procs[-1], work / "gateway.log")

        n, c = args.requests, args.concurrency
        print(f"anvil {devnet.rpc_url}; origin {origin_url}; gateway {gw_url} "
              f"(SQLite, settlement deferred, worker parked); concurrency {c}")
        results: dict[str, Result] = {}

        # (a) free route
        for name, url in (("free: origin direct", origin_url + "/v1/status"),
                          ("free: through gateway", gw_url + "/sky/v1/status")):
            wrk_run(url, c)
            results[name] = await client_loop(name, url, [{}] * n, c, 200)
            print(results[name].line(), flush=True)

        # (b) paid x402, deferred: distinct pre-signed payments
        r = httpx.get(gw_url + "/sky/v1/flights")
        assert r.status_code == 402, r.status_code
        req = PaymentRequirements.model_validate(
            decode_header(r.headers["PAYMENT-REQUIRED"], max_len=65536)["accepts"][0])
        t0 = time.perf_counter()
        paid = signed_headers(devnet, req, args.paid + 1)
        print(f"(signed {len(paid)} payments in {time.perf_counter() - t0:.1f} s, not timed)")
        name = "paid x402 deferred (unique)"
        results[name] = await client_loop(name, gw_url + "/sky/v1/flights", paid[1:], c, 200)
        print(results[name].line(), flush=True)

        # (c) replays of one served payment
        first = httpx.get(gw_url + "/sky/v1/flights", headers=paid[0])
        assert first.status_code == 200, first.text
        name = "replay of a served payment"
        results[name] = await client_loop(name, gw_url + "/sky/v1/flights",
                                          [paid[0]] * args.replays, c, 200)
        print(results[name].line(), flush=True)

        direct = results["free: origin direct"]
        free = results["free: through gateway"]
        paid_r = results["paid x402 deferred (unique)"]
        replay = results["replay of a served payment"]
        print()
        print(f"gateway free route / origin direct:   {free.rps / direct.rps:5.2f}x throughput, "
              f"p50 +{free.pct(50) - direct.pct(50):.2f} ms")
        print(f"paid deferred / free through gateway: {paid_r.rps / free.rps:5.2f}x throughput, "
              f"p50 +{paid_r.pct(50) - free.pct(50):.2f} ms")
        print(f"replay / paid deferred:               {replay.rps / paid_r.rps:5.2f}x throughput")
    finally:
        for p in reversed(procs):
            stop(p)
        devnet.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="free-route requests per target")
    ap.add_argument("--paid", type=int, default=1500, help="distinct paid requests")
    ap.add_argument("--replays", type=int, default=3000, help="replays of one payment")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
