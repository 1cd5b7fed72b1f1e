"""The devnet's mirror node: the REST endpoints Tollgate uses, in the real JSON shapes.

Shapes follow ``rest/api/v1/openapi.yml`` of hiero-mirror-node:

* ``GET /api/v1/accounts/{idOrAliasOrEvmAddress}`` -> AccountBalanceTransactions
  (``account``, ``balance.balance``/``balance.timestamp``, ``key._type``/``key.key``, ...).
* ``GET /api/v1/accounts/{id}/allowances/crypto`` (``spender.id`` with eq/gt/gte/lt/lte,
  ``limit`` 1..100 default 25, ``order`` default desc) -> ``{"allowances": [...],
  "links": {"next": <relative path or null>}}``; ``next`` is set whenever a page is
  full, as the real mirror does, so a client may fetch one empty last page.
* ``GET /api/v1/transactions/{transactionIdOrHash}`` (dash id or hex hash, optional
  ``nonce``/``scheduled``) -> ``{"transactions": [TransactionDetail...]}`` in consensus order.
* Errors: ``{"_status": {"messages": [{"message": ...}]}}`` with 400/404/429/503.

Ingestion lag: a change is visible only once ``consensus time + lag <= now``.
Faults: ``MirrorControl.mode`` ``"503"`` answers 503 to everything; ``"429"`` answers
429 ``Too Many Requests`` (with ``Retry-After: <MirrorControl.retry_after>`` seconds when
set), as a rate-limited public mirror does; ``"refuse"`` is applied by
:class:`MirrorServer` (listener closed) and, for keep-alive connections that are already
open, by dropping the connection here. Every request that reaches the app (answered or
not) is logged in ``MirrorControl.requests`` as its path and query string.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
from dataclasses import dataclass, field

from aiohttp import web

from chains.hedera.ids import format_timestamp

from .ledger import Ledger, Record, TxKey

_ENTITY_RE = re.compile(r"(?:(\d{1,10})\.)??(?:(\d{1,10})\.)?(\d{1,10})", re.ASCII)
_LONG_ZERO_RE = re.compile(r"(?:0x)?0{24}([0-9a-fA-F]{16})")
_TX_ID_RE = re.compile(r"(\d{1,10})\.(\d{1,10})\.(\d{1,10})-(\d{1,19})-(\d{1,9})", re.ASCII)
_HASH_RE = re.compile(r"(?:0x)?([0-9a-fA-F]{96})")
_FILTER_RE = re.compile(r"(?:(eq|gt|gte|lt|lte):)?(\d{1,10}\.\d{1,10}\.\d{1,10}|\d{1,10})", re.ASCII)
_BAD_TX_ID = ("Invalid Transaction id. Please use \\shard.realm.num-sss-nnn\\ format where sss are seconds "
              "and nnn are nanoseconds")
_OPS = {"eq": lambda a, b: a == b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


@dataclass
class MirrorControl:
    """Knobs shared with the test thread: ingestion lag, fault mode (None/"503"/"429"/
    "refuse"), the Retry-After seconds of "429" (None: no header), and the request log."""

    lag_ns: int = 0
    mode: str | None = None
    retry_after: int | None = None
    requests: list[str] = field(default_factory=list)


def _error(status: int, *messages: str) -> web.Response:
    return web.json_response({"_status": {"messages": [{"message": m} for m in messages]}}, status=status)


class _BadRequest(Exception):
    pass


def _entity_num(text: str, param: str) -> int | None:
    """Account number of a path/query id (``0.0.N``, ``0.N``, ``N``, long-zero EVM address).
    None when well-formed but not a shard-0/realm-0 account we could hold (e.g. an alias)."""
    match = _ENTITY_RE.fullmatch(text)
    if match:
        shard, realm, num = match.groups()
        return int(num) if int(shard or 0) == 0 and int(realm or 0) == 0 else None
    match = _LONG_ZERO_RE.fullmatch(text)
    if match:
        return int(match.group(1), 16)
    if re.fullmatch(r"(0x)?[0-9a-fA-F]{40}|[A-Z2-7]+", text):
        return None  # an EVM address or alias: valid syntax, no such account here
    raise _BadRequest(f"Invalid parameter: {param}")


def _check_params(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise _BadRequest(f"Unknown query parameter: {name}")


def _id(num: int) -> str:
    return f"0.0.{num}"


class MirrorApp:
    """Builds the aiohttp application over a ledger and a control block."""

    def __init__(self, ledger: Ledger, control: MirrorControl):
        self.ledger = ledger
        self.control = control

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._faults])
        app.router.add_get("/api/v1/accounts/{id}", self.account)
        app.router.add_get("/api/v1/accounts/{id}/allowances/crypto", self.crypto_allowances)
        app.router.add_get("/api/v1/transactions/{id}", self.transaction)
        return app

    def _cutoff(self) -> int:
        return self.ledger.now_ns() - self.control.lag_ns

    @web.middleware
    async def _faults(self, request: web.Request, handler):
        self.control.requests.append(request.path_qs)
        mode = self.control.mode
        if mode == "refuse" and request.transport is not None:
            # A keep-alive connection opened before the switch: drop it. The response
            # returned below goes nowhere (writing to an aborted transport is a no-op).
            request.transport.abort()
            return web.Response(status=503)
        if mode == "503":
            return _error(503, "Service Unavailable")
        if mode == "429":
            response = _error(429, "Too Many Requests")
            if self.control.retry_after is not None:
                response.headers["Retry-After"] = str(self.control.retry_after)
            return response
        try:
            return await handler(request)
        except _BadRequest as bad:
            return _error(400, str(bad))
        except web.HTTPNotFound:
            return _error(404, "Not found")

    async def account(self, request: web.Request) -> web.Response:
        _check_params(request, {"limit", "order", "timestamp", "transactiontype", "transactions"})
        num = _entity_num(request.match_info["id"], "idOrAliasOrEvmAddress")
        with self.ledger.lock:
            found = self.ledger.mirror_account(num, self._cutoff()) if num is not None else None
        if found is None:
            return _error(404, "Not found")
        account, balance, balance_ts = found
        key = None
        if account.key_type is not None:
            key = {"_type": account.key_type, "key": account.public_key.hex()}
        return web.json_response({
            "account": _id(account.num), "alias": None, "auto_renew_period": 7776000,
            "balance": {"balance": balance, "timestamp": format_timestamp(balance_ts), "tokens": []},
            "created_timestamp": format_timestamp(account.created_ns), "decline_reward": False,
            "deleted": False, "ethereum_nonce": 0,
            "evm_address": "0x" + account.num.to_bytes(20, "big").hex(),  # long-zero form
            "expiry_timestamp": None, "key": key, "max_automatic_token_associations": 0,
            "memo": account.memo, "pending_reward": 0, "receiver_sig_required": False,
            "staked_account_id": None, "staked_node_id": None, "stake_period_start": None,
            "transactions": [], "links": {"next": None},
        })

    async def crypto_allowances(self, request: web.Request) -> web.Response:
        _check_params(request, {"limit", "order", "spender.id"})
        path_id = request.match_info["id"]
        owner = _entity_num(path_id, "idOrAliasOrEvmAddress")
        limit_text = request.query.get("limit", "25")
        if not limit_text.isascii() or not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise _BadRequest("Invalid parameter: limit")
        limit, order = int(limit_text), request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _BadRequest("Invalid parameter: order")
        filters = []
        for text in request.query.getall("spender.id", []):
            match = _FILTER_RE.fullmatch(text)
            if match is None:
                raise _BadRequest("Invalid parameter: spender.id")
            op, value = match.group(1) or "eq", match.group(2)
            filters.append((op, int(value.rsplit(".", 1)[-1])))
        with self.ledger.lock:
            rows = self.ledger.mirror_allowances(owner, self._cutoff()) if owner is not None else []
        rows = [row for row in rows if all(_OPS[op](row[0], bound) for op, bound in filters)]
        rows.sort(key=lambda row: row[0], reverse=order == "desc")
        page = rows[:limit]
        next_link = None
        if len(page) == limit and not any(op == "eq" for op, _ in filters):
            keep = [f"spender.id={op}:{_id(b)}" for op, b in filters
                    if op.startswith("gt" if order == "desc" else "lt")]
            bound = f"spender.id={'lt' if order == 'desc' else 'gt'}:{_id(page[-1][0])}"
            next_link = f"/api/v1/accounts/{path_id}/allowances/crypto?" + "&".join(
                [f"limit={limit}", f"order={order}", *keep, bound])
        return web.json_response({
            "allowances": [{
                "amount": state.amount, "amount_granted": state.granted, "owner": _id(owner),
                "spender": _id(spender),
                "timestamp": {"from": format_timestamp(state.since_ns), "to": None},
            } for spender, state in page],
            "links": {"next": next_link},
        })

    async def transaction(self, request: web.Request) -> web.Response:
        _check_params(request, {"nonce", "scheduled"})
        text = request.match_info["id"]
        nonce = request.query.get("nonce")
        if nonce is not None and not (nonce.isascii() and nonce.isdigit()):
            raise _BadRequest("Invalid parameter: nonce")
        scheduled = request.query.get("scheduled")
        if scheduled not in (None, "true", "false"):
            raise _BadRequest("Invalid parameter: scheduled")
        cutoff = self._cutoff()
        match, by_hash = _TX_ID_RE.fullmatch(text), _HASH_RE.fullmatch(text)
        with self.ledger.lock:
            if match:
                shard, realm, num, seconds, nanos = (int(part) for part in match.groups())
                found = []
                if shard == 0 and realm == 0:
                    found = [r for key, recs in self.ledger.records.items()
                             if (key.payer, key.seconds, key.nanos) == (num, seconds, nanos)
                             for r in recs if r.consensus_ns <= cutoff]
            elif by_hash:
                digest = bytes.fromhex(by_hash.group(1))
                found = [r for recs in self.ledger.records.values() for r in recs
                         if r.tx_hash == digest and r.consensus_ns <= cutoff]
            else:
                raise _BadRequest(_BAD_TX_ID)
        if nonce is not None:
            found = [r for r in found if r.key.nonce == int(nonce)]
        if scheduled is not None:
            found = [r for r in found if r.key.scheduled == (scheduled == "true")]
        if not found:
            return _error(404, "Not found")
        found.sort(key=lambda r: r.consensus_ns)
        return web.json_response({"transactions": [_transaction_json(r) for r in found]})


def _transaction_json(record: Record) -> dict:
    key: TxKey = record.key
    return {
        "assessed_custom_fees": [], "batch_key": None, "bytes": None,
        "charged_tx_fee": record.charged_fee, "consensus_timestamp": format_timestamp(record.consensus_ns),
        "entity_id": _id(record.created) if record.created is not None else None,
        "max_custom_fees": [], "max_fee": str(record.max_fee),
        "memo_base64": base64.b64encode(record.memo).decode(), "name": record.name,
        "nft_transfers": [], "node": _id(record.node), "nonce": key.nonce,
        "parent_consensus_timestamp": None, "result": record.status, "scheduled": key.scheduled,
        "staking_reward_transfers": [], "token_transfers": [],
        "transaction_hash": base64.b64encode(record.tx_hash).decode(),
        "transaction_id": f"0.0.{key.payer}-{key.seconds}-{key.nanos:09d}",
        "transfers": [{"account": _id(t.account), "amount": t.amount, "is_approval": t.is_approval}
                      for t in record.transfers],
        "valid_duration_seconds": str(record.valid_duration_s),
        "valid_start_timestamp": format_timestamp(key.valid_start_ns),
    }


class MirrorServer:
    """Runs the mirror app on its own event loop in a background thread (sync API)."""

    def __init__(self, ledger: Ledger, control: MirrorControl, host: str = "127.0.0.1", port: int = 0):
        self.control = control
        self.host = host
        self.port = port
        self._app = MirrorApp(ledger, control).build()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="devnet-mirror", daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await self._open()

    async def _open(self) -> None:
        # Bind the socket ourselves: port 0 picks a free port once, and reopening after a
        # "refuse" fault binds the same port again (SO_REUSEADDR).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _close_listener(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def set_refusing(self, refusing: bool) -> None:
        """Close (or reopen, on the same port) the listening socket."""
        self._call(self._close_listener() if refusing else self._reopen())

    async def _reopen(self) -> None:
        if self._site is None:
            await self._open()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
