"""Hostile input at scale: generated requests against a gateway running the real rails.

Usage: python bench/fuzz.py [--n 100000] [--seed 1] [--concurrency 32] [--pool 24] [--postgres]

Starts anvil with the test USDC (chains.evm.devnet), the local Hedera network
(chains.hedera.devnet), an aiohttp origin and two gateways in this process, all on
127.0.0.1: the main one with the session API rate limit off (so inputs reach the
handlers) and one with it on (`rate-limited` inputs). Paygates: `/evm` (x402-evm,
settle after), `/hbar` (x402-hedera, settle before), `/sess` and `/other`
(hedera-session), `/all` (all three rails, deferred); in each, `/free/*` costs 0 units.

Inputs come from bench/fuzz_inputs.py (seeded; none is a valid payment) and are sent
with bounded concurrency, through aiohttp or, for bytes no client library sends, a raw
socket. Printed: counts per family, status and `error` code, and what must be zero:
5xx answers, log records at ERROR or above (unhandled exceptions; requests aiohttp's own
parser refuses with a 400 are logged at DEBUG by the gateway, see gateway/logs.py, so one
at ERROR counts too),
origin calls on priced routes (every input is unpaid, so the origin may only see
`/free/*` calls, forwarded with 0 units and no payer; a call with a payer would mean an
input was taken as a payment, and counts too), and requests that got no answer. Exit
status 1 if any of these is non-zero. `--postgres` puts the main gateway's store on a
throwaway local PostgreSQL server instead of SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from multidict import CIMultiDict  # noqa: E402
from yarl import URL  # noqa: E402

from bench.fuzz_inputs import Fuzzer, Input  # noqa: E402
from bench.fuzz_setup import (  # noqa: E402
    HEDERA_ENV,
    SETTLER_ENV,
    build_context,
    fresh_postgres_database,
    fuzz_config,
    start_gateway,
    start_origin,
)

# Seconds for one answer: above the 15 s an activation may poll the mirror for a proof
# (junk can be a well-formed transaction id too), with margin for a loaded machine.
TIMEOUT = 30.0
_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}


# -- what the run saw ---------------------------------------------------------------------


@dataclass
class Report:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_family: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list[str] = field(default_factory=list)  # 5xx: the input that caused it
    no_answer: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    error_kinds: Counter = field(default_factory=Counter)  # where the logged errors came from
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # `error` codes
    unpaid_origin_calls: list[str] = field(default_factory=list)
    paid_origin_calls: list[str] = field(default_factory=list)  # no input is a valid payment
    free_origin_calls: int = 0
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return (len(self.server_errors) + len(self.no_answer) + len(self.log_errors)
                + len(self.unpaid_origin_calls) + len(self.paid_origin_calls))

    def summary(self) -> str:
        lines = [f"inputs sent: {self.sent} in {self.seconds:.1f} s "
                 f"({self.sent / max(self.seconds, 1e-9):.0f}/s)", "", "per family:"]
        for fam in sorted(self.by_family):
            c = self.by_family[fam]
            detail = ", ".join(f"{s}: {n}" for s, n in sorted(c.items(), key=lambda x: str(x[0])))
            lines.append(f"  {fam:16} {sum(c.values()):7}   {detail}")
            if self.codes.get(fam):
                top = ", ".join(f"{k} {v}" for k, v in self.codes[fam].most_common(8))
                lines.append(f"  {'':16} {'':7}   codes: {top}")
        lines.append("statuses: " + ", ".join(f"{s}: {n}" for s, n in
                                                sorted(self.statuses.items(), key=lambda x: str(x[0]))))
        lines.append(f"origin calls on free routes: {self.free_origin_calls}")
        lines.append("")
        for label, items in (("5xx answers", self.server_errors), ("no answer", self.no_answer),
                             ("gateway log records at ERROR", self.log_errors),
                             ("unpaid origin calls on priced routes", self.unpaid_origin_calls),
                             ("paid origin calls (no input is a valid payment)", self.paid_origin_calls)):
            lines.append(f"{label}: {len(items)}")
            if items is self.log_errors:
                lines += [f"  {n} x {kind}" for kind, n in self.error_kinds.most_common()]
            lines += [f"    {item[:1500]}" for item in _distinct(items)[:6]]
        return "\n".join(lines)


def _distinct(items: list[str]) -> list[str]:
    """One example per kind: the first 40 characters tell 5xx families and log sites apart."""
    seen, out = set(), []
    for item in items:
        key = item.split(" gateway=")[0][:40] if " <- [" not in item else item.split("]")[0]
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


class _ErrorRecords(logging.Handler):
    """Every log record at ERROR or above, with its traceback."""

    def __init__(self, report: Callable[[], "Report"]) -> None:
        super().__init__(logging.ERROR)
        self.report = report
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.report().log_errors.append(self.format(record))
        self.report().error_kinds[_where(record)] += 1


def _where(record: logging.LogRecord) -> str:
    """`ExceptionType at file:function` of the innermost frame in this repository."""
    if not record.exc_info or record.exc_info[1] is None:
        return f"{record.name}: {record.getMessage()[:100]}"
    exc = record.exc_info[1]
    ours = [f for f in traceback.extract_tb(exc.__traceback__)
            if f.filename.startswith(str(REPO)) and "/.venv/" not in f.filename]
    at = f"{Path(ours[-1].filename).relative_to(REPO)}:{ours[-1].name}" if ours else "?"
    return f"{type(exc).__name__} at {at}"


def describe(inp: Input) -> str:
    body = inp.body if inp.body is None else inp.body[:300]
    headers = [(n[:60], v[:300]) for n, v in inp.headers]
    return (f"[{inp.family}] {inp.method} {inp.target[:300]!r} gateway={inp.gateway} "
            f"headers={headers!r} body={body!r}")


# -- sending ------------------------------------------------------------------------------


def _wire(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def needs_raw(inp: Input) -> bool:
    """Anything aiohttp's client would refuse or rewrite goes over a plain socket."""
    if inp.family == "protocol" or inp.method not in _METHODS or not inp.target.startswith("/") \
            or len(inp.target) > 8000:
        return True
    if any(not ("\x21" <= c <= "\x7e") for c in inp.target):
        return True
    for name, value in inp.headers:
        if not name or any(c not in _TOKEN_CHARS for c in name):
            return True
        if value != value.strip() or any(not ("\x20" <= c <= "\x7e") for c in value):
            return True
    return False


async def send_raw(base: str, inp: Input) -> int:
    url = URL(base)
    head = [f"{inp.method} {inp.target} HTTP/1.1", f"Host: {url.host}:{url.port}", "Connection: close"]
    head += [f"{n}: {v}" for n, v in inp.headers]
    body = inp.body or b""
    if inp.body is not None:
        head.append(f"Content-Length: {len(body)}")
    data = b"\r\n".join(_wire(line) for line in head) + b"\r\n\r\n" + body
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(data)
        await writer.drain()
        first = await reader.readline()
        await reader.read()  # to the end: the server closes after answering
    finally:
        writer.close()
    parts = first.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ConnectionError(f"no HTTP answer: {first[:80]!r}")
    return int(parts[1])


async def send(http: aiohttp.ClientSession, base: str, inp: Input) -> tuple[int, str]:
    """(status, the JSON body's `error` code or "") for one input."""
    if needs_raw(inp):
        return await send_raw(base, inp), ""
    headers = CIMultiDict(inp.headers)
    async with http.request(inp.method, URL(base + inp.target, encoded=True), headers=headers,
                            data=inp.body, allow_redirects=False) as r:
        body = await r.read()
        code = ""
        if r.content_type == "application/json":
            try:
                code = str(json.loads(body).get("error", ""))[:40]
            except (ValueError, AttributeError):
                pass
        return r.status, code


# -- the run -------------------------------------------------------------------------------


class Harness:
    """An origin and two gateways (session API rate limit off and on) on the given
    devnets, and the material inputs are built from. `report` collects what is sent
    (set-up traffic is not counted)."""

    def __init__(self, evm, net, *, pool: int = 24, concurrency: int = 32,
                 slow_inputs: bool = True, database_url: str | None = None) -> None:
        self.evm, self.net = evm, net
        self.database_url = database_url  # the main gateway's store (None: SQLite)
        self.store = "postgresql" if database_url else "sqlite"
        self.pool, self.concurrency, self.slow_inputs = pool, concurrency, slow_inputs
        self.report = Report()
        self.gateways: dict[str, str] = {}
        self._errors = _ErrorRecords(lambda: self.report)
        self._runners: list[web.AppRunner] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-fuzz-")

    async def __aenter__(self) -> "Harness":
        self._env = {k: os.environ.get(k) for k in (SETTLER_ENV, HEDERA_ENV)}
        os.environ[SETTLER_ENV] = self.evm.settler.private_key
        os.environ[HEDERA_ENV] = self.net.account("spender").private_key
        logging.getLogger().addHandler(self._errors)
        try:
            origin, origin_url = await start_origin(lambda: self.report)
            self._runners.append(origin)
            for name, per_minute in (("main", 0), ("limited", 5)):
                work = Path(self._tmp.name) / name
                work.mkdir()
                runner, url = await start_gateway(
                    fuzz_config(self.evm, self.net, origin_url, work, per_minute=per_minute,
                                database_url=self.database_url if name == "main" else None))
                self._runners.append(runner)
                self.gateways[name] = url
            # Room for answers with long headers (a 402 names the long URL it was asked for).
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency), auto_decompress=False,
                max_line_size=65536, max_field_size=65536)
            self.ctx = await build_context(self.evm, self.net, self.http, self.gateways["main"],
                                           self.pool, self.slow_inputs)
        except BaseException:
            await self.__aexit__()
            raise
        self.report = Report()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if getattr(self, "http", None) is not None:
            await self.http.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        logging.getLogger().removeHandler(self._errors)
        self._tmp.cleanup()
        for key, value in getattr(self, "_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    async def send_one(self, inp: Input) -> int | str:
        """Send one input; record its status (or "no answer") and any 5xx in `report`."""
        report = self.report
        report.sent += 1
        code = ""
        try:
            async with asyncio.timeout(TIMEOUT):
                status, code = await send(self.http, self.gateways[inp.gateway], inp)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            status = "no answer"
            report.no_answer.append(f"{type(exc).__name__}: {exc} <- {describe(inp)}")
        report.statuses[status] += 1
        report.by_family[inp.family][status] += 1
        if code:
            report.codes[inp.family][code] += 1
        if isinstance(status, int) and status >= 500:
            report.server_errors.append(f"{status} <- {describe(inp)}")
        return status

    async def fuzz(self, n: int, seed: int) -> Report:
        """Send `n` inputs generated from `seed`, `concurrency` at a time; a fresh report."""
        self.report = report = Report()
        fuzzer = Fuzzer(random.Random(seed), self.ctx)
        started = time.monotonic()
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self.send_one(fuzzer.next())

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        report.seconds = time.monotonic() - started
        return report


async def run(evm, net, *, n: int, seed: int, concurrency: int = 32, pool: int = 24,
              postgres_url: str | None = None) -> Report:
    database_url = await fresh_postgres_database(postgres_url) if postgres_url else None
    async with Harness(evm, net, pool=pool, concurrency=concurrency,
                       database_url=database_url) as harness:
        return await harness.fuzz(n, seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="generated inputs to send")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--pool", type=int, default=24, help="invalid signed payments to mutate")
    ap.add_argument("--postgres", action="store_true",
                    help="the main gateway on a throwaway local PostgreSQL (default: SQLite)")
    args = ap.parse_args(argv)

    from contextlib import ExitStack

    from chains.evm.devnet import EvmDevnet
    from chains.hedera.devnet import HederaDevnet

    # No console logging: the run collects ERROR records itself and prints them below.
    with ExitStack() as stack:
        pg_url = None
        if args.postgres:  # first: its server processes are forked before gRPC has threads
            from tests.support.postgres import start_postgres

            pg_url = stack.enter_context(start_postgres(database="tollgate_fuzz")).url
        evm = stack.enter_context(EvmDevnet.start(payers=2))
        net = stack.enter_context(HederaDevnet())
        report = asyncio.run(run(evm, net, n=args.n, seed=args.seed, concurrency=args.concurrency,
                                 pool=args.pool, postgres_url=pg_url))
    print(f"command: python bench/fuzz.py --n {args.n} --seed {args.seed} --concurrency "
          f"{args.concurrency} --pool {args.pool}{' --postgres' if args.postgres else ''}")
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
