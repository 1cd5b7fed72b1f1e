"""``HederaDevnet``: one consensus node + one mirror node on 127.0.0.1, sync API.

Usage (pytest session fixture, ``tollgate devnet``, ``python -m chains.hedera.devnet``)::

    with HederaDevnet() as net:
        client = net.sdk_client("alice")          # hiero_sdk_python Client, operator alice
        net.mirror_url                             # "http://127.0.0.1:<port>"
        net.network_map()                          # {"127.0.0.1:<port>": "0.0.3"}

The gateway must be configured with exactly these values where it would otherwise use
testnet's: only URLs differ. Keys are generated fresh on every start; balances are
integer tinybars. The gRPC server runs on grpc's own thread pool and the mirror on an
event loop in a background thread, so blocking SDK calls from the test thread work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import keys
from .consensus import ConsensusServer
from .ledger import FEE_COLLECTOR, NODE, TREASURY, Ledger
from .mirror import MirrorControl, MirrorServer
from .processor import DEFAULT_FEE, Processor

HBAR = 100_000_000  # tinybars

# name -> (key type, starting balance). "operator" is the treasury 0.0.2.
DEFAULT_ACCOUNTS: dict[str, tuple[str, int]] = {
    "operator": (keys.ED25519, 1_000_000 * HBAR),
    "spender": (keys.ED25519, 1_000 * HBAR),     # the gateway's spender / fee payer
    "merchant": (keys.ED25519, 10 * HBAR),
    "alice": (keys.ED25519, 10_000 * HBAR),
    "bob": (keys.ED25519, 10_000 * HBAR),
    "carol": (keys.ECDSA_SECP256K1, 10_000 * HBAR),
}


@dataclass(frozen=True)
class DevAccount:
    """A devnet account and its key. ``private_key`` is DER hex, which
    ``PrivateKey.from_string`` / ``from_string_der`` load for both key types
    (``private_key_raw`` is the bare 32-byte hex, ambiguous to ``from_string``)."""

    name: str
    account_id: str
    key_type: str
    private_key: str
    private_key_raw: str
    public_key: str

    def sdk_account_id(self):
        from hiero_sdk_python import AccountId

        return AccountId.from_string(self.account_id)

    def sdk_private_key(self):
        from hiero_sdk_python import PrivateKey

        return PrivateKey.from_string_der(self.private_key)


class HederaDevnet:
    """A local Hedera network for tests and the demo (see module docstring)."""

    def __init__(self, *, host: str = "127.0.0.1", grpc_port: int = 0, mirror_port: int = 0,
                 mirror_lag: float = 0.0, fee: int = DEFAULT_FEE,
                 accounts: dict[str, tuple[str, int]] | None = None, network: str = "hedera:devnet"):
        self.host = host
        self.network = network  # CAIP-2 label only; nothing on the wire carries it
        self._grpc_port = grpc_port
        self._mirror_port = mirror_port
        self._account_spec = dict(DEFAULT_ACCOUNTS if accounts is None else accounts)
        self.ledger = Ledger()
        self.processor = Processor(self.ledger, fee=fee)
        self.control = MirrorControl(lag_ns=_seconds_to_ns(mirror_lag))
        self.accounts: dict[str, DevAccount] = {}
        self._consensus: ConsensusServer | None = None
        self._mirror: MirrorServer | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> HederaDevnet:
        """Create the genesis accounts and start both servers. Returns self."""
        if self._consensus is not None:
            raise RuntimeError("devnet already started")
        self._genesis()
        consensus = ConsensusServer(self.processor, self.host, self._grpc_port)
        mirror = MirrorServer(self.ledger, self.control, self.host, self._mirror_port)
        try:
            consensus.start()
            mirror.start()
        except BaseException:
            consensus.stop(0)
            mirror.stop()
            raise
        self._consensus, self._mirror = consensus, mirror
        return self

    def stop(self) -> None:
        """Stop both servers (idempotent)."""
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None
        if self._consensus is not None:
            self._consensus.stop()
            self._consensus = None

    def __enter__(self) -> HederaDevnet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _genesis(self) -> None:
        with self.ledger.lock:
            genesis = self.ledger.next_consensus_ns()
            self.ledger.create_account(None, None, 0, num=NODE, at_ns=genesis)
            self.ledger.create_account(None, None, 0, num=FEE_COLLECTOR, at_ns=genesis)
            for name, (key_type, balance) in self._account_spec.items():
                num = TREASURY if name == "operator" else None
                self._add(name, key_type, balance, num=num, at_ns=genesis)

    def _add(self, name: str, key_type: str, balance: int, *, num: int | None = None,
             at_ns: int | None = None) -> DevAccount:
        if name in self.accounts:
            raise ValueError(f"account name {name!r} already used")
        pair = keys.generate(key_type)
        account = self.ledger.create_account(key_type, pair.public_raw, balance, num=num, at_ns=at_ns)
        dev = DevAccount(name, f"0.0.{account.num}", key_type, pair.private_der_hex, pair.private_raw_hex,
                         pair.public_hex)
        self.accounts[name] = dev
        return dev

    # -- addresses --------------------------------------------------------------------

    @property
    def grpc_address(self) -> str:
        return self._running()[0].address

    @property
    def node_account_id(self) -> str:
        return f"0.0.{NODE}"

    @property
    def mirror_url(self) -> str:
        return self._running()[1].url

    def network_map(self) -> dict[str, str]:
        """``{"host:port": "0.0.3"}``: what ``Client.for_network`` needs (as strings)."""
        return {self.grpc_address: self.node_account_id}

    def _running(self) -> tuple[ConsensusServer, MirrorServer]:
        if self._consensus is None or self._mirror is None:
            raise RuntimeError("devnet is not running; call start()")
        return self._consensus, self._mirror

    # -- accounts ---------------------------------------------------------------------

    def account(self, name_or_id: str | DevAccount) -> DevAccount:
        """Look an account up by name (``"alice"``) or id (``"0.0.1003"``)."""
        if isinstance(name_or_id, DevAccount):
            return name_or_id
        if name_or_id in self.accounts:
            return self.accounts[name_or_id]
        for dev in self.accounts.values():
            if dev.account_id == name_or_id:
                return dev
        raise KeyError(f"no devnet account {name_or_id!r}")

    def create_account(self, name: str, key_type: str = keys.ED25519,
                       balance: int = 100 * HBAR) -> DevAccount:
        """Add a funded account directly in state (no transaction, visible to the mirror
        at once). For creation *by transaction* use the SDK's AccountCreateTransaction."""
        with self.ledger.lock:
            return self._add(name, key_type, balance)

    def balance(self, account: str | DevAccount) -> int:
        """Consensus balance in tinybars (not lagged like the mirror)."""
        num = int(self.account(account).account_id.rsplit(".", 1)[1])
        with self.ledger.lock:
            return self.ledger.accounts[num].balance

    @property
    def fee(self) -> int:
        """The fixed fee charged to the payer of every handled transaction (tinybars)."""
        return self.processor.fee

    def sdk_client(self, account: str | DevAccount = "operator"):
        """A ``hiero_sdk_python.Client`` for this network with ``account`` as operator.
        The caller closes it (``client.close()``)."""
        from hiero_sdk_python import AccountId, Client

        dev = self.account(account)
        client = Client.for_network({self.grpc_address: AccountId(0, 0, NODE)})
        client.set_operator(dev.sdk_account_id(), dev.sdk_private_key())
        return client

    # -- fault injection and mirror behaviour -----------------------------------------

    def set_mirror_lag(self, seconds: float) -> None:
        """Records become visible on the mirror ``seconds`` after their consensus time."""
        self.control.lag_ns = _seconds_to_ns(seconds)

    def set_mirror_down(self, down: bool, mode: str = "503") -> None:
        """Take the mirror down (``mode`` "503": answer 503; "refuse": refuse connections)
        or bring it back (``down=False``)."""
        if mode not in ("503", "refuse"):
            raise ValueError("mode must be '503' or 'refuse'")
        mirror = self._running()[1]
        if not down:
            self.control.mode = None
            mirror.set_refusing(False)
            return
        self.control.mode = mode
        mirror.set_refusing(mode == "refuse")

    def set_mirror_rate_limited(self, limited: bool, retry_after: int | None = None) -> None:
        """Make the mirror answer 429 Too Many Requests to everything (with
        ``Retry-After: <retry_after>`` when given), or stop (``limited=False``)."""
        self.control.retry_after = retry_after if limited else None
        self.control.mode = "429" if limited else None

    def mirror_requests(self, since: int = 0) -> list[str]:
        """Paths (with query) of the requests the mirror received, oldest first, from
        index ``since`` on (``len(mirror_requests())`` marks a point to count from)."""
        return list(self.control.requests[since:])

    def fail_next_submissions(self, count: int = 1, mode: str = "lost") -> None:
        """Next ``count`` transaction submissions: "busy" (precheck BUSY, not processed) or
        "lost" (processed, then the answer is dropped with gRPC UNAVAILABLE)."""
        self._running()[0].servicer.fail_next(count, mode)

    def set_duplicates_reach_consensus(self, enabled: bool) -> None:
        """Let a resubmitted transaction id reach consensus as a DUPLICATE_TRANSACTION
        record (as with a retry through a second node) instead of failing precheck."""
        self.processor.duplicates_reach_consensus = enabled

    # -- description ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``tollgate devnet``: endpoints, fee, accounts and keys."""
        return {
            "network": self.network,
            "grpc": self.grpc_address,
            "node_account_id": self.node_account_id,
            "nodes": self.network_map(),  # the shape of HederaConfig.nodes
            "mirror_url": self.mirror_url,
            "mirror_lag_seconds": self.control.lag_ns / 1e9,
            "fee_tinybars": self.fee,
            "accounts": {
                name: {
                    "account_id": dev.account_id, "key_type": dev.key_type,
                    "private_key": dev.private_key, "public_key": dev.public_key,
                    "balance_tinybars": self.balance(dev),
                } for name, dev in self.accounts.items()
            },
        }


def _seconds_to_ns(seconds: float) -> int:
    if seconds < 0:
        raise ValueError("lag must not be negative")
    return int(seconds * 1_000_000_000)
