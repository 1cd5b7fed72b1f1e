"""Ledger state of the devnet: accounts, keys, balances, allowances, records, receipts.

Pure Python, no protobuf and no I/O. All amounts are integer tinybars.

Two views of the same state live here, because that is what the gateway sees on a real
network:

* **consensus state** (``accounts``, ``allowances``, ``records``): what the consensus node
  uses to handle the next transaction. A fully spent allowance is *removed* here, as
  Hedera services do, so the next approved pull gets SPENDER_DOES_NOT_HAVE_ALLOWANCE.
* **mirror history** (``*_history``): every change stamped with its consensus time, so the
  mirror REST app can answer "as of" a cutoff (ingestion lag). The mirror keeps a spent
  allowance with ``amount`` 0 and hides one revoked by an approve of 0.

Every mutation must happen under ``lock`` (an RLock shared with the gRPC threads and the
mirror thread); the helpers do not lock by themselves so that a caller can apply a whole
transaction atomically.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# System accounts. 0.0.2 is the treasury (the operator of a local network), 0.0.3 the
# only consensus node, 0.0.98 the fee collection account, as on real networks.
TREASURY = 2
NODE = 3
FEE_COLLECTOR = 98
FIRST_USER_NUM = 1001


@dataclass
class Account:
    """Consensus-side account. ``key_type`` is ``ED25519``/``ECDSA_SECP256K1``, or None for
    a system account nobody can sign for (fee collector)."""

    num: int
    key_type: str | None
    public_key: bytes | None
    balance: int
    created_ns: int
    memo: str = ""


@dataclass(frozen=True)
class AllowanceState:
    """An HBAR allowance: ``amount`` still spendable out of ``granted`` approved at ``since_ns``."""

    amount: int
    granted: int
    since_ns: int


@dataclass(frozen=True)
class Transfer:
    account: int
    amount: int
    is_approval: bool = False


@dataclass(frozen=True, order=True)
class TxKey:
    """Transaction identity used for deduplication and lookups (shard/realm are always 0)."""

    payer: int
    seconds: int
    nanos: int
    scheduled: bool = False
    nonce: int = 0

    @property
    def valid_start_ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanos


@dataclass(frozen=True)
class Record:
    """What reached consensus for one submission: the receipt (``status``, ``created``)
    plus what the mirror shows. ``transfers`` is the net HBAR movement per account,
    fee included, as in a real transaction record."""

    key: TxKey
    consensus_ns: int
    name: str
    status: str
    memo: bytes
    transfers: tuple[Transfer, ...]
    charged_fee: int
    max_fee: int
    valid_duration_s: int
    node: int
    tx_hash: bytes
    created: int | None = None


@dataclass
class Ledger:
    """The devnet's state. ``clock_ns`` is injectable for tests of time-based rules."""

    clock_ns: Callable[[], int] = time.time_ns
    lock: threading.RLock = field(default_factory=threading.RLock)
    accounts: dict[int, Account] = field(default_factory=dict)
    allowances: dict[tuple[int, int], AllowanceState] = field(default_factory=dict)
    records: dict[TxKey, list[Record]] = field(default_factory=dict)
    _balance_history: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _allowance_history: dict[tuple[int, int], list[tuple[int, AllowanceState]]] = field(
        default_factory=dict)
    _last_consensus_ns: int = 0
    _next_num: int = FIRST_USER_NUM

    # -- time -------------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock_ns()

    def next_consensus_ns(self) -> int:
        """A consensus timestamp: wall clock, but strictly increasing (ties bumped by 1 ns)."""
        ts = max(self.clock_ns(), self._last_consensus_ns + 1)
        self._last_consensus_ns = ts
        return ts

    # -- accounts ---------------------------------------------------------------------

    def create_account(self, key_type: str | None, public_key: bytes | None, balance: int, *,
                       num: int | None = None, at_ns: int | None = None, memo: str = "") -> Account:
        """Insert an account (genesis or a handled CryptoCreate). ``num`` defaults to the next
        free user number. The balance comes from nowhere: callers that create by transaction
        must debit the payer themselves."""
        if balance < 0:
            raise ValueError("balance must not be negative")
        if num is None:
            num = self._next_num
        if num in self.accounts:
            raise ValueError(f"account 0.0.{num} already exists")
        self._next_num = max(self._next_num, num + 1)
        ts = self.next_consensus_ns() if at_ns is None else at_ns
        account = Account(num, key_type, public_key, balance, ts, memo)
        self.accounts[num] = account
        self._balance_history[num] = [(ts, balance)]
        return account

    def adjust_balance(self, num: int, delta: int, at_ns: int) -> None:
        """Apply ``delta`` tinybars to an existing account; callers have checked solvency."""
        account = self.accounts[num]
        if account.balance + delta < 0:
            raise ValueError(f"balance of 0.0.{num} would go negative")
        account.balance += delta
        self._balance_history[num].append((at_ns, account.balance))

    # -- allowances -------------------------------------------------------------------

    def set_allowance(self, owner: int, spender: int, state: AllowanceState | None, at_ns: int,
                      *, mirror_state: AllowanceState | None = None) -> None:
        """Replace the consensus allowance (None removes it) and log what the mirror shows.

        ``mirror_state`` defaults to ``state``; a removal by full spend passes the spent
        allowance (amount 0) so the mirror keeps it visible while consensus forgets it.
        """
        key = (owner, spender)
        if state is None or state.amount == 0:
            self.allowances.pop(key, None)
        else:
            self.allowances[key] = state
        shown = mirror_state if mirror_state is not None else (state or AllowanceState(0, 0, at_ns))
        self._allowance_history.setdefault(key, []).append((at_ns, shown))

    # -- records ----------------------------------------------------------------------

    def add_record(self, record: Record) -> None:
        self.records.setdefault(record.key, []).append(record)

    def first_record(self, key: TxKey) -> Record | None:
        found = self.records.get(key)
        return found[0] if found else None

    # -- mirror views (as of a cutoff consensus time) ---------------------------------

    def mirror_records(self, key: TxKey, cutoff_ns: int) -> list[Record]:
        return [r for r in self.records.get(key, ()) if r.consensus_ns <= cutoff_ns]

    def mirror_account(self, num: int, cutoff_ns: int) -> tuple[Account, int, int] | None:
        """(account, balance, balance timestamp) as the mirror knows it at ``cutoff_ns``."""
        account = self.accounts.get(num)
        if account is None or account.created_ns > cutoff_ns:
            return None
        entry = _latest(self._balance_history[num], cutoff_ns)
        assert entry is not None  # the creation entry is at created_ns <= cutoff
        return account, entry[1], entry[0]

    def mirror_allowances(self, owner: int, cutoff_ns: int) -> list[tuple[int, AllowanceState]]:
        """(spender, state) for every allowance of ``owner`` the mirror lists at ``cutoff_ns``:
        revoked (granted 0) ones hidden, spent ones (amount 0) kept. Sorted by spender."""
        shown = []
        for (own, spender), history in self._allowance_history.items():
            if own != owner:
                continue
            entry = _latest(history, cutoff_ns)
            if entry is not None and entry[1].granted > 0:
                shown.append((spender, entry[1]))
        return sorted(shown, key=lambda item: item[0])


def _latest(history: list[tuple[int, object]], cutoff_ns: int):
    """Last (ts, value) entry with ts <= cutoff; histories are appended in time order."""
    index = bisect.bisect_right(history, cutoff_ns, key=lambda entry: entry[0])
    return history[index - 1] if index else None
