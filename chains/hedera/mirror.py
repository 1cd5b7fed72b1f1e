"""Async client for the Hedera mirror node REST API (the parts Tollgate uses).

``MirrorClient(base_url)`` talks to testnet/mainnet mirrors and to the devnet alike; only
the URL differs. All money is integer tinybars. Results are frozen dataclasses.

Errors:

* ``ValueError`` for malformed ids, raised before any request.
* :class:`MirrorUnavailable` when the mirror cannot give an answer: connection error,
  timeout, HTTP 5xx or 429, or a body that is not the expected JSON. Retry later. A 429
  raises its subclass :class:`MirrorRateLimited`, whose ``retry_after`` (seconds, or None)
  comes from the ``Retry-After`` header: callers wait that long before asking again.
* :class:`MirrorNotFound` (also a ``LookupError``) for 404 where absence is an error
  (:meth:`MirrorClient.account`); :meth:`MirrorClient.transaction` returns None instead.
* :class:`MirrorBadRequest` (also a ``ValueError``) for 400: the mirror rejected a parameter.

Standard library + httpx only: no hiero_sdk_python import on this path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from chains import callstats

from .ids import AccountId, TransactionId

__all__ = [
    "AccountInfo",
    "Allowance",
    "MirrorBadRequest",
    "MirrorClient",
    "MirrorError",
    "MirrorNotFound",
    "MirrorRateLimited",
    "MirrorUnavailable",
    "TransactionRecord",
    "Transfer",
    "pick_record",
]

MAX_PAGES = 50  # bound on links.next following: a misbehaving mirror must not loop us forever


class MirrorError(Exception):
    """Base class of mirror client errors."""


class MirrorUnavailable(MirrorError):
    """No usable answer (network error, timeout, 5xx/429, bad body): transient."""


class MirrorRateLimited(MirrorUnavailable):
    """The mirror answered 429. ``retry_after``: seconds it asked us to wait (from
    ``Retry-After``, delta-seconds or an HTTP date), None when it did not say."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110: delta-seconds or an HTTP date) as seconds from now;
    None when absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class MirrorNotFound(MirrorError, LookupError):
    """The mirror answered 404."""


class MirrorBadRequest(MirrorError, ValueError):
    """The mirror answered 400 (a parameter it does not accept)."""


@dataclass(frozen=True)
class Allowance:
    """An HBAR allowance as the mirror lists it. ``amount`` is what remains of
    ``amount_granted``; a fully spent allowance stays listed with ``amount == 0``."""

    owner: str
    spender: str
    amount: int
    amount_granted: int
    timestamp_from: str
    timestamp_to: str | None


@dataclass(frozen=True)
class AccountInfo:
    """``key_type`` is ``"ED25519"``, ``"ECDSA_SECP256K1"``, ``"ProtobufEncoded"`` (complex
    keys) or None (no key); ``key_hex`` is the raw public key (ECDSA: 33-byte compressed)."""

    id: str
    balance: int
    key_type: str | None
    key_hex: str | None
    balance_timestamp: str | None = None
    deleted: bool = False


@dataclass(frozen=True)
class Transfer:
    account: str
    amount: int
    is_approval: bool


@dataclass(frozen=True)
class TransactionRecord:
    """One mirror transaction entry. ``payer`` is the transaction id's account (the
    mirror has no separate payer field); ``memo`` is the decoded ``memo_base64``."""

    transaction_id: str
    consensus_timestamp: str
    name: str
    result: str
    payer: str
    memo: bytes
    memo_base64: str
    transfers: tuple[Transfer, ...]
    charged_tx_fee: int
    node: str | None = None
    entity_id: str | None = None
    valid_start_timestamp: str | None = None
    scheduled: bool = False
    nonce: int = 0

    @property
    def succeeded(self) -> bool:
        return self.result == "SUCCESS"

    @property
    def memo_text(self) -> str:
        """The memo as text (invalid UTF-8 replaced)."""
        return self.memo.decode("utf-8", "replace")

    def net_amount(self, account: str) -> int:
        """Net tinybars moved for ``account`` in this transaction (fees included)."""
        return sum(t.amount for t in self.transfers if t.account == account)


def pick_record(records: list[TransactionRecord]) -> TransactionRecord | None:
    """The record that decides a transaction's fate among duplicates: a SUCCESS one if
    any, else the first that is not a DUPLICATE_TRANSACTION, else the first."""
    if not records:
        return None
    for record in records:
        if record.succeeded:
            return record
    for record in records:
        if record.result != "DUPLICATE_TRANSACTION":
            return record
    return records[0]


class MirrorClient:
    """Mirror node REST client. ``base_url`` is the mirror's origin, e.g.
    ``https://testnet.mirrornode.hedera.com`` (a trailing ``/api/v1`` is tolerated).

    Pass ``http`` to share an ``httpx.AsyncClient`` (then the caller closes it); otherwise
    one is created and closed by :meth:`aclose` / ``async with``.
    """

    def __init__(self, base_url: str, http: httpx.AsyncClient | None = None, *, timeout: float = 5.0):
        base = base_url.rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self.base_url = base
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> MirrorClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- HTTP ---------------------------------------------------------------------------

    @callstats.timed("hedera_mirror")
    async def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET ``base_url + path`` (``path`` starts with ``/api/v1``) -> JSON object."""
        url = self.base_url + path
        try:
            response = await self._http.get(url, params=params, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            raise MirrorUnavailable(f"mirror timed out: {url}") from exc
        except httpx.TransportError as exc:
            raise MirrorUnavailable(f"mirror unreachable: {url}: {exc!r}") from exc
        status = response.status_code
        if status == 404:
            raise MirrorNotFound(f"not found: {url}")
        if status == 429:
            raise MirrorRateLimited(f"mirror answered 429: {url}",
                                    retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            raise MirrorUnavailable(f"mirror answered {status}: {url}")
        if status == 400:
            raise MirrorBadRequest(f"mirror rejected request ({_messages(response)}): {url}")
        if status != 200:
            raise MirrorError(f"mirror answered {status}: {url}")
        try:
            body = response.json()
        except ValueError as exc:
            raise MirrorUnavailable(f"mirror sent invalid JSON: {url}") from exc
        if not isinstance(body, dict):
            raise MirrorUnavailable(f"mirror sent unexpected JSON: {url}")
        return body

    # -- endpoints ----------------------------------------------------------------------

    async def crypto_allowances(self, owner: str, spender: str | None = None, *,
                                limit: int | None = None) -> list[Allowance]:
        """Every HBAR allowance ``owner`` granted (to ``spender`` only, if given), following
        ``links.next`` across pages. ``limit`` is the page size (1..100)."""
        owner_id = str(AccountId.parse(owner))
        params: dict[str, Any] = {}
        if spender is not None:
            params["spender.id"] = str(AccountId.parse(spender))
        if limit is not None:
            if not 1 <= limit <= 100:
                raise ValueError("limit must be between 1 and 100")
            params["limit"] = limit
        path: str | None = f"/api/v1/accounts/{owner_id}/allowances/crypto"
        found: list[Allowance] = []
        for _ in range(MAX_PAGES):
            body = await self._get(path, params)
            try:
                found.extend(_allowance(item) for item in body["allowances"])
                path = (body.get("links") or {}).get("next")
            except (KeyError, TypeError, ValueError) as exc:
                raise MirrorUnavailable(f"unexpected allowances answer: {exc!r}") from exc
            if not path:
                return found
            if not path.startswith("/api/v1/"):
                raise MirrorUnavailable(f"unexpected links.next: {path!r}")
            params = None  # the next link carries its own query string
        raise MirrorUnavailable(f"more than {MAX_PAGES} pages of allowances")

    async def crypto_allowance(self, owner: str, spender: str) -> Allowance | None:
        """The (owner, spender) HBAR allowance, or None when the mirror lists none
        (never granted, or revoked). A spent one is returned with ``amount == 0``."""
        spender_id = str(AccountId.parse(spender))
        for allowance in await self.crypto_allowances(owner, spender_id):
            if allowance.spender == spender_id:
                return allowance
        return None

    async def account(self, account_id: str) -> AccountInfo:
        """Balance and key of an account. Raises MirrorNotFound if the mirror has no such
        account (yet: a new account appears after the ingestion lag)."""
        account = str(AccountId.parse(account_id))
        body = await self._get(f"/api/v1/accounts/{account}", {"transactions": "false"})
        try:
            balance = body.get("balance") or {}
            key = body.get("key") or {}
            return AccountInfo(
                id=str(body["account"]), balance=int(balance.get("balance") or 0),
                key_type=key.get("_type"), key_hex=key.get("key"),
                balance_timestamp=balance.get("timestamp"), deleted=bool(body.get("deleted")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MirrorUnavailable(f"unexpected account answer: {exc!r}") from exc

    async def transaction(self, tx_id: str | TransactionId) -> list[TransactionRecord] | None:
        """Every record for a transaction id (either spelling), in consensus order; None
        when the mirror has none (unknown, failed precheck, or not ingested yet)."""
        mirror_id = TransactionId.parse(tx_id).to_mirror()
        try:
            body = await self._get(f"/api/v1/transactions/{mirror_id}")
        except MirrorNotFound:
            return None
        try:
            return [_record(item) for item in body["transactions"]] or None
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise MirrorUnavailable(f"unexpected transaction answer: {exc!r}") from exc

    async def wait_transaction(self, tx_id: str | TransactionId, timeout: float = 30.0,
                               interval: float = 0.5) -> TransactionRecord | None:
        """Poll until the mirror has the transaction; return the deciding record (see
        :func:`pick_record`). Returns None if the mirror kept answering "not found"
        until ``timeout``; raises MirrorUnavailable if its last answer was a failure (so
        "not there" and "could not ask" stay distinct). Never waits past ``timeout``."""
        TransactionId.parse(tx_id)  # ValueError now, not after the first poll
        deadline = time.monotonic() + timeout
        while True:
            try:
                records = await self.transaction(tx_id)
                failure = None
            except MirrorUnavailable as exc:
                records, failure = None, exc
            if records:
                return pick_record(records)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if failure is not None:
                    raise failure
                return None
            wait = interval
            if isinstance(failure, MirrorRateLimited) and failure.retry_after is not None:
                wait = max(interval, failure.retry_after)
                if wait > remaining:
                    raise failure  # the mirror asked us to wait past our deadline
            await asyncio.sleep(min(wait, remaining))


def _messages(response: httpx.Response) -> str:
    try:
        return "; ".join(m.get("message", "") for m in response.json()["_status"]["messages"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:200]


def _allowance(item: dict[str, Any]) -> Allowance:
    stamp = item.get("timestamp") or {}
    return Allowance(
        owner=str(item["owner"]), spender=str(item["spender"]), amount=int(item["amount"]),
        amount_granted=int(item["amount_granted"]), timestamp_from=str(stamp.get("from")),
        timestamp_to=stamp.get("to"),
    )


def _record(item: dict[str, Any]) -> TransactionRecord:
    tx_id = TransactionId.parse(item["transaction_id"])
    memo_b64 = item.get("memo_base64") or ""
    return TransactionRecord(
        transaction_id=tx_id.to_mirror(), consensus_timestamp=str(item["consensus_timestamp"]),
        name=str(item["name"]), result=str(item["result"]), payer=str(tx_id.account),
        memo=base64.b64decode(memo_b64, validate=True), memo_base64=memo_b64,
        transfers=tuple(Transfer(str(t["account"]), int(t["amount"]), bool(t.get("is_approval", False)))
                        for t in item.get("transfers") or ()),
        charged_tx_fee=int(item.get("charged_tx_fee") or 0), node=item.get("node"),
        entity_id=item.get("entity_id"), valid_start_timestamp=item.get("valid_start_timestamp"),
        scheduled=bool(item.get("scheduled", False)), nonce=int(item.get("nonce") or 0),
    )
