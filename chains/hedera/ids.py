"""Hedera identifiers: account ids, transaction ids and consensus timestamps.

Pure helpers, standard library only (importing ``hiero_sdk_python`` costs seconds; the
gateway's request path must not pay for it).

Account ids are ``shard.realm.num`` (``0.0.123``). Transaction ids come in two spellings:

* SDK form ``0.0.123@1700000000.5``: what ``str(TransactionId)`` prints. The part after
  the dot is the **integer** number of nanoseconds, not a decimal fraction, and the
  Python SDK does not zero-pad it (``.5`` means 5 ns). Other SDKs print it padded
  (``.000000005``); both parse to the same id.
* Mirror form ``0.0.123-1700000000-000000005``: what the mirror node REST API wants and
  returns, nanoseconds zero-padded to 9 digits.

Ids are compared as numbers (:class:`TransactionId` is an ordered, hashable value), never
as strings. Every parser raises ``ValueError`` on junk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AccountId",
    "TransactionId",
    "parse_account_id",
    "is_account_id",
    "normalize_account_id",
    "parse_transaction_id",
    "to_mirror_tx_id",
    "to_sdk_tx_id",
    "same_transaction",
    "parse_timestamp",
    "format_timestamp",
]

# Digit limits follow the mirror node's OpenAPI patterns (EntityId: \d{1,10} per part,
# TransactionIdStr: seconds \d{1,19}, nanos \d{1,9}). ASCII only: str.isdigit() would
# accept other scripts' digits.
_ACCOUNT_RE = re.compile(r"(\d{1,10})\.(\d{1,10})\.(\d{1,10})", re.ASCII)
_SDK_TX_RE = re.compile(r"(\d{1,10}\.\d{1,10}\.\d{1,10})@(\d{1,19})\.(\d{1,9})(\?scheduled)?", re.ASCII)
_MIRROR_TX_RE = re.compile(r"(\d{1,10}\.\d{1,10}\.\d{1,10})-(\d{1,19})-(\d{1,9})", re.ASCII)
_TIMESTAMP_RE = re.compile(r"(\d{1,19})(?:\.(\d{1,9}))?", re.ASCII)

_MAX_INT64 = 2**63 - 1
NANOS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, order=True)
class AccountId:
    """A Hedera entity id ``shard.realm.num``; orders and compares numerically."""

    shard: int
    realm: int
    num: int

    @classmethod
    def parse(cls, value: str | AccountId) -> AccountId:
        """Parse ``"0.0.123"``. Raises ``ValueError`` for anything else (aliases, EVM
        addresses, bare numbers, whitespace, signs)."""
        if isinstance(value, AccountId):
            return value
        if not isinstance(value, str):
            raise ValueError(f"account id must be a string like 0.0.123, got {type(value).__name__}")
        match = _ACCOUNT_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"invalid Hedera account id: {value!r} (expected shard.realm.num)")
        return cls(*(int(part) for part in match.groups()))

    def __str__(self) -> str:
        return f"{self.shard}.{self.realm}.{self.num}"


def parse_account_id(value: str | AccountId) -> AccountId:
    """Parse an account id; see :meth:`AccountId.parse`."""
    return AccountId.parse(value)


def is_account_id(value: object) -> bool:
    """True when ``value`` is a well-formed ``shard.realm.num`` string."""
    return isinstance(value, str) and _ACCOUNT_RE.fullmatch(value) is not None


def normalize_account_id(value: str | AccountId) -> str:
    """Canonical text of an account id (leading zeros dropped): ``"0.0.0123"`` -> ``"0.0.123"``."""
    return str(AccountId.parse(value))


@dataclass(frozen=True, order=True)
class TransactionId:
    """A transaction id: payer account + valid start. Orders by (account, seconds, nanos).

    ``scheduled`` is carried for completeness (``?scheduled`` suffix in the SDK form); the
    mirror form has no place for it (the mirror takes it as a ``scheduled`` query param).
    """

    account: AccountId
    seconds: int
    nanos: int
    scheduled: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.nanos < NANOS_PER_SECOND:
            raise ValueError(f"transaction id nanos out of range: {self.nanos}")
        if not 0 <= self.seconds <= _MAX_INT64:
            raise ValueError(f"transaction id seconds out of range: {self.seconds}")

    @classmethod
    def parse(cls, value: str | TransactionId) -> TransactionId:
        """Parse either spelling (SDK ``@`` form or mirror dash form)."""
        if isinstance(value, TransactionId):
            return value
        if not isinstance(value, str):
            raise ValueError(f"transaction id must be a string, got {type(value).__name__}")
        match = _SDK_TX_RE.fullmatch(value)
        if match is not None:
            account, seconds, nanos, scheduled = match.groups()
            return cls(AccountId.parse(account), int(seconds), int(nanos), scheduled is not None)
        match = _MIRROR_TX_RE.fullmatch(value)
        if match is not None:
            account, seconds, nanos = match.groups()
            return cls(AccountId.parse(account), int(seconds), int(nanos))
        raise ValueError(
            f"invalid Hedera transaction id: {value!r} "
            "(expected 0.0.123@1700000000.5 or 0.0.123-1700000000-000000005)"
        )

    @property
    def valid_start_ns(self) -> int:
        """Valid start as integer nanoseconds since the epoch."""
        return self.seconds * NANOS_PER_SECOND + self.nanos

    def to_mirror(self) -> str:
        """Mirror REST form, nanos zero-padded to 9: ``0.0.123-1700000000-000000005``."""
        return f"{self.account}-{self.seconds}-{self.nanos:09d}"

    def to_sdk(self) -> str:
        """SDK form exactly as hiero-sdk-python prints it (nanos unpadded)."""
        suffix = "?scheduled" if self.scheduled else ""
        return f"{self.account}@{self.seconds}.{self.nanos}{suffix}"

    def __str__(self) -> str:
        return self.to_sdk()


def parse_transaction_id(value: str | TransactionId) -> TransactionId:
    """Parse a transaction id in either spelling; see :meth:`TransactionId.parse`."""
    return TransactionId.parse(value)


def to_mirror_tx_id(value: str | TransactionId) -> str:
    """Either spelling -> mirror dash form."""
    return TransactionId.parse(value).to_mirror()


def to_sdk_tx_id(value: str | TransactionId) -> str:
    """Either spelling -> SDK ``@`` form."""
    return TransactionId.parse(value).to_sdk()


def same_transaction(a: str | TransactionId, b: str | TransactionId) -> bool:
    """True when both ids name the same transaction (compared as numbers, ``scheduled`` included)."""
    return TransactionId.parse(a) == TransactionId.parse(b)


def parse_timestamp(value: str) -> int:
    """Mirror timestamp ``"1700000000.000000001"`` -> integer nanoseconds.

    Unlike the SDK transaction-id form, the fraction here *is* a decimal fraction
    (``"1.5"`` is 1.5 s), which is how the mirror writes timestamps.
    """
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, got {type(value).__name__}")
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid timestamp: {value!r} (expected seconds.nanoseconds)")
    seconds, fraction = match.groups()
    nanos = int((fraction or "0").ljust(9, "0"))
    return int(seconds) * NANOS_PER_SECOND + nanos


def format_timestamp(ns: int) -> str:
    """Integer nanoseconds -> mirror timestamp text ``"1700000000.000000001"``."""
    if ns < 0:
        raise ValueError("timestamp must not be negative")
    seconds, nanos = divmod(ns, NANOS_PER_SECOND)
    return f"{seconds}.{nanos:09d}"
