"""EVM settlement throughput on anvil with real blocks, and the deferred queue under load.

Usage: python bench/bench_settle.py [--block-time 1] [--count N] [--rate R] [--seconds S]
                                    [--gateway-rate R] [--gateway-seconds S] [--quick]

Two parts, each on its own fresh anvil (`--block-time`, 1 s by default) with the test USDC
and the SettlementBatch contract (chains.evm.devnet):

  (1) chain level: N pre-signed EIP-3009 authorizations settled through
      (a) `single`: chains.evm.settle.Settler, one transaction each, pipelined (all in
          flight at once, no transaction waits for another's receipt), and
      (b) `batch`: chains.evm.batch.BatchSettler through the batch contract,
      offered at `--rate` per second (0 = all at once), at most 1000 in flight (as the
      gateway's worker); settlements/s = settled / time from
      the first offer to the last outcome, plus per-settlement latency p50/p99 and how many
      transactions it took.
  (2) gateway: `python -m gateway serve` (SQLite, `deferred` settlement, the worker on, the
      batch contract configured) takes distinct pre-signed x402 payments at `--gateway-rate`
      requests/s for `--gateway-seconds`; the deferred queue (payments `verified`, `queued`,
      `settling`, `unknown`) is sampled every 0.5 s during the load and until it drains.
      Reported: requests served, settlements/s while loaded, queue depth over time, and
      whether any payment was settled after its authorization expired (must be none) or
      failed.
  (3) backlog: `--backlog` deferred payments served while the worker is parked, then a
      restarted gateway drains them: the queue's drain capacity, whatever the request rate.

Nothing here is a pass/fail threshold; the numbers go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_gateway import SETTLER_ENV, free_port, serve_origin, spawn, stop, wait_http  # noqa: E402

OPEN = ("verified", "queued", "settling", "unknown")
IN_FLIGHT = 1000  # settlements in flight at once, as the gateway's worker (WORKER_BATCH)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


# -- (1) chain level ------------------------------------------------------------------


def presign(devnet, count: int, value: int = 1000, validity: int = 300):
    from eth_account import Account

    from chains.evm.settle import TransferAuthorization
    from tests.support.eip3009 import TRANSFER_TYPES

    domain = {"name": devnet.token_name, "version": devnet.token_version,
              "chainId": devnet.chain_id, "verifyingContract": devnet.token_address}
    now = int(time.time())
    out = []
    for i in range(count):
        payer = devnet.payers[i % len(devnet.payers)]
        auth = TransferAuthorization(payer.address, devnet.merchant.address, value, 0,
                                     now + validity, os.urandom(32))
        msg = {"from": auth.from_, "to": auth.to, "value": auth.value, "validAfter": 0,
               "validBefore": auth.valid_before, "nonce": auth.nonce}
        out.append((auth, bytes(Account.sign_typed_data(payer.private_key, domain,
                                                         TRANSFER_TYPES, msg).signature)))
    return out


async def chain_run(devnet, mode: str, signed: list, rate: float) -> dict:
    from chains.evm.batch import BatchSettler
    from chains.evm.rpc import RpcClient
    from chains.evm.settle import Settler

    async with RpcClient(devnet.rpc_url) as rpc:
        settler = Settler(rpc, devnet.settler.private_key)
        batcher = BatchSettler(settler, devnet.batch_address, max_items=200, receipt_timeout=120)
        latencies: list[float] = []
        in_flight = asyncio.Semaphore(IN_FLIGHT)

        async def one(auth, sig):
            t0 = time.perf_counter()
            async with in_flight:
                if mode == "batch":
                    outcome = await batcher.settle(devnet.token_address, auth, sig)
                else:
                    outcome = await settler.settle(devnet.token_address, auth, sig, timeout=120)
            latencies.append(time.perf_counter() - t0)
            return outcome

        start = time.perf_counter()
        tasks = []
        for i, (auth, sig) in enumerate(signed):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(auth, sig)))
        outcomes = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    states: dict[str, int] = {}
    for o in outcomes:
        states[o.state] = states.get(o.state, 0) + 1
    return {"mode": mode, "n": len(signed), "elapsed": elapsed,
            "per_s": states.get("settled", 0) / elapsed, "states": states,
            "txs": len({o.tx_hash for o in outcomes if o.tx_hash}),
            "p50": pct(latencies, 50), "p99": pct(latencies, 99)}


def part_chain(args) -> None:
    from chains.evm.devnet import EvmDevnet

    for mode in ("single", "batch"):
        with EvmDevnet.start(payers=8, block_time=args.block_time) as devnet:
            signed = presign(devnet, args.count)
            r = asyncio.run(chain_run(devnet, mode, signed, args.rate))
        print(f"chain {r['mode']:<6} n={r['n']} offered at {args.rate or 'all at once'}/s: "
              f"{r['per_s']:7.1f} settled/s  ({r['elapsed']:.1f} s, {r['txs']} txs, "
              f"latency p50 {r['p50']:.2f} s p99 {r['p99']:.2f} s) {r['states']}", flush=True)


# -- (2) gateway, deferred queue -----------------------------------------------------


def gateway_toml(devnet, origin_url: str, port: int, work: Path, batch: bool,
                 interval: float = 0.2) -> str:
    batch_line = f'batch_contract = "{devnet.batch_address}"' if batch else ""
    return f"""
[server]
host = "127.0.0.1"
port = {port}
allow_private_targets = true
settlement_interval_seconds = {interval}

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
receipt_timeout_seconds = 60
{batch_line}

[[paygates]]
id = "sky"
prefix = "/sky"
target = "{origin_url}"
rails = ["x402-evm"]
prices = {{ usdc = "0.001" }}
pay_to = {{ evm = "{devnet.merchant.address}" }}
settlement = "deferred"
"""


def queue_depth(db: Path) -> tuple[int, int]:
    """(open payments, settled payments), read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = dict(conn.execute("SELECT state, count(*) FROM payments GROUP BY state").fetchall())
    finally:
        conn.close()
    return sum(rows.get(s, 0) for s in OPEN), rows.get("settled", 0)


async def offer_load(url: str, headers: list[dict], rate: float, concurrency: int) -> dict:
    import aiohttp

    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def one(h):
            async with sem:
                async with http.get(url, headers=h) as r:
                    await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

        start = time.perf_counter()
        tasks = []
        for i, h in enumerate(headers):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(h)))
        await asyncio.gather(*tasks)
        return {"statuses": statuses, "elapsed": time.perf_counter() - start}


async def sample_queue(db: Path, samples: list, stop_evt: asyncio.Event, t0: float) -> None:
    while not stop_evt.is_set():
        depth, settled = await asyncio.to_thread(queue_depth, db)
        samples.append((time.perf_counter() - t0, depth, settled))
        try:
            await asyncio.wait_for(stop_evt.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


def part_gateway(args, batch: bool) -> None:
    import httpx

    from chains.evm.devnet import EvmDevnet
    from chains.x402 import PaymentRequirements, decode_header
    from bench_gateway import signed_headers

    with EvmDevnet.start(payers=8, block_time=args.block_time) as devnet, \
            tempfile.TemporaryDirectory(prefix="tollgate-bench-settle-") as tmp:
        work = Path(tmp)
        procs = []
        try:
            origin_port, gw_port = free_port(), free_port()
            origin_url = f"http://127.0.0.1:{origin_port}"
            procs.append(spawn([sys.executable, str(REPO / "bench" / "bench_gateway.py"),
                                "--serve-origin", str(origin_port)], work / "origin.log"))
            wait_http(origin_url + "/", procs[-1], work / "origin.log")
            (work / "tollgate.toml").write_text(gateway_toml(devnet, origin_url, gw_port, work, batch))
            env = dict(os.environ, **{SETTLER_ENV: devnet.settler.private_key})
            procs.append(spawn([sys.executable, "-m", "gateway", "serve", "-c",
                                str(work / "tollgate.toml")], work / "gateway.log", env))
            gw_url = f"http://127.0.0.1:{gw_port}"
            wait_http(gw_url + "/sky/v1/flights", procs[-1], work / "gateway.log")
            req = PaymentRequirements.model_validate(decode_header(httpx.get(
                gw_url + "/sky/v1/flights").headers["PAYMENT-REQUIRED"])["accepts"][0])
            count = int(args.gateway_rate * args.gateway_seconds)
            headers = signed_headers(devnet, req, count)
            db = work / "tollgate.db"
            samples: list = []

            async def go():
                stop_evt = asyncio.Event()
                t0 = time.perf_counter()
                sampler = asyncio.ensure_future(sample_queue(db, samples, stop_evt, t0))
                load = await offer_load(gw_url + "/sky/v1/flights", headers, args.gateway_rate, 64)
                loaded = time.perf_counter() - t0
                deadline = time.perf_counter() + args.drain_seconds
                while time.perf_counter() < deadline:
                    await asyncio.sleep(0.5)
                    if samples and samples[-1][1] == 0 and samples[-1][2] >= load["statuses"].get(200, 0):
                        break
                stop_evt.set()
                await sampler
                return load, loaded

            load, loaded = asyncio.run(go())
            conn = sqlite3.connect(db)
            rows = conn.execute("SELECT state, tx_hash, valid_before FROM payments").fetchall()
            conn.close()
        finally:
            for p in reversed(procs):
                stop(p)
        served = load["statuses"].get(200, 0)
        states: dict[str, int] = {}
        for state, _, _ in rows:
            states[state] = states.get(state, 0) + 1
        late = 0
        blocks: dict[str, int] = {}
        for state, tx_hash, valid_before in rows:
            if state != "settled":
                continue
            if tx_hash not in blocks:
                receipt = devnet.request("eth_getTransactionReceipt", [tx_hash])
                block = devnet.request("eth_getBlockByNumber", [receipt["blockNumber"], False])
                blocks[tx_hash] = int(block["timestamp"], 16)
            late += blocks[tx_hash] >= valid_before
        during = [s for s in samples if s[0] <= loaded]
        settled_in_load = during[-1][2] if during else 0
        label = "batch" if batch else "single"
        print(f"gateway deferred [{label}]: offered {args.gateway_rate:g} req/s for "
              f"{args.gateway_seconds:g} s -> {served} served in {load['elapsed']:.1f} s "
              f"({served / load['elapsed']:.0f} req/s) {load['statuses']}")
        print(f"  settled during the load: {settled_in_load} ({settled_in_load / loaded:.0f}/s); "
              f"final states {states}; {len(blocks)} transactions; settled after expiry: {late}")
        print("  queue depth over time (s: open / settled): " + "  ".join(
            f"{t:.0f}:{d}/{s}" for t, d, s in samples[::2]), flush=True)


def part_backlog(args) -> None:
    """A backlog of deferred payments (served while the worker was parked) drained by a
    restarted gateway: the queue's drain capacity, apart from how fast requests come in."""
    import httpx

    from bench_gateway import signed_headers
    from chains.evm.devnet import EvmDevnet
    from chains.x402 import PaymentRequirements, decode_header

    with EvmDevnet.start(payers=8, block_time=args.block_time) as devnet, \
            tempfile.TemporaryDirectory(prefix="tollgate-bench-settle-") as tmp:
        work = Path(tmp)
        procs = []
        origin_port, gw_port = free_port(), free_port()
        origin_url = f"http://127.0.0.1:{origin_port}"
        gw_url = f"http://127.0.0.1:{gw_port}"
        env = dict(os.environ, **{SETTLER_ENV: devnet.settler.private_key})
        db = work / "tollgate.db"

        def gateway(interval: float, log: str):
            (work / "tollgate.toml").write_text(
                gateway_toml(devnet, origin_url, gw_port, work, True, interval))
            proc = spawn([sys.executable, "-m", "gateway", "serve", "-c",
                          str(work / "tollgate.toml")], work / log, env)
            wait_http(gw_url + "/sky/v1/flights", proc, work / log)
            return proc

        try:
            procs.append(spawn([sys.executable, str(REPO / "bench" / "bench_gateway.py"),
                                "--serve-origin", str(origin_port)], work / "origin.log"))
            wait_http(origin_url + "/", procs[-1], work / "origin.log")
            parked = gateway(3600, "parked.log")
            req = PaymentRequirements.model_validate(decode_header(httpx.get(
                gw_url + "/sky/v1/flights").headers["PAYMENT-REQUIRED"])["accepts"][0])
            headers = signed_headers(devnet, req, args.backlog)
            load = asyncio.run(offer_load(gw_url + "/sky/v1/flights", headers, 10_000, 64))
            stop(parked)
            depth, _ = queue_depth(db)
            t0 = time.perf_counter()
            procs.append(gateway(0.2, "drain.log"))
            ready = time.perf_counter() - t0
            samples: list = []
            base_fees: list[int] = []
            deadline = time.perf_counter() + args.drain_seconds
            while time.perf_counter() < deadline:
                d, settled = queue_depth(db)
                samples.append((time.perf_counter() - t0, d, settled))
                base_fees.append(int(devnet.request("eth_getBlockByNumber", ["latest", False])
                                     ["baseFeePerGas"], 16))
                if d == 0:
                    break
                time.sleep(0.5)
        finally:
            for p in reversed(procs):
                stop(p)
            if args.keep_logs:
                import shutil
                for log in work.glob("*.log"):
                    shutil.copy(log, Path(args.keep_logs) / log.name)
        t_end, left, settled = samples[-1]
        print(f"backlog: {load['statuses']} served with the worker parked -> {depth} queued; "
              f"a restarted gateway (ready in {ready:.1f} s) settled {settled} in {t_end:.1f} s "
              f"({settled / t_end:.0f}/s from its start), {left} left")
        print("  queue depth over time (s: open / settled): " + "  ".join(
            f"{t:.0f}:{d}/{s}" for t, d, s in samples[::2]), flush=True)
        print("  base fee (gwei) over time: " + " ".join(f"{b / 1e9:.2f}" for b in base_fees[::2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block-time", type=float, default=1.0)
    ap.add_argument("--count", type=int, default=1500, help="authorizations per chain-level run")
    ap.add_argument("--rate", type=float, default=0, help="chain-level offer rate (0: all at once)")
    ap.add_argument("--gateway-rate", type=float, default=100.0)
    ap.add_argument("--gateway-seconds", type=float, default=20.0)
    ap.add_argument("--drain-seconds", type=float, default=60.0)
    ap.add_argument("--keep-logs", help="copy the backlog part's gateway logs into this folder")
    ap.add_argument("--backlog", type=int, default=3000, help="payments queued for the backlog part")
    ap.add_argument("--parts", default="chain,gateway-batch,gateway-single,backlog")
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test): figures mean nothing")
    args = ap.parse_args()
    if args.quick:
        args.count, args.gateway_rate, args.gateway_seconds, args.drain_seconds = 20, 20, 1, 20
        args.backlog, args.parts = 20, "chain,gateway-batch,backlog"
    parts = args.parts.split(",")
    if "chain" in parts:
        part_chain(args)
    if "gateway-batch" in parts:
        part_gateway(args, batch=True)
    if "gateway-single" in parts:
        part_gateway(args, batch=False)
    if "backlog" in parts:
        part_backlog(args)


if __name__ == "__main__":
    main()
