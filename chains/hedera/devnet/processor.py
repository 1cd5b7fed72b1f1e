"""Transaction flow of the devnet consensus node: precheck, then handle.

``Processor.submit`` takes the ``proto.Transaction`` a client sent and returns the
precheck code, exactly what a node puts in ``TransactionResponse``:

* **precheck** (nothing recorded, nothing charged): parse, node account, transaction id
  fields, memo, valid duration, time box (TRANSACTION_EXPIRED / INVALID_TRANSACTION_START),
  DUPLICATE_TRANSACTION, payer exists, **payer signature** (INVALID_SIGNATURE), max fee
  (INSUFFICIENT_TX_FEE), payer can pay the fee (INSUFFICIENT_PAYER_BALANCE), then the
  body's pure checks.
* **handle** (consensus is immediate; a record and a receipt exist and the fee is charged
  whatever the outcome): the other required signatures, entity existence, allowances,
  balances; then the effect, all or nothing. See :mod:`.handlers`.

Deliberate simplifications: one node; simple ED25519/ECDSA keys only (no key lists,
thresholds, aliases, tokens, receiver-signature-required); a fixed fee (``fee``
tinybars: ``fee // 20`` to node 0.0.3, the rest to 0.0.98).
"""

from __future__ import annotations

from hiero_sdk_python.hapi.services import transaction_pb2

from . import handlers
from .ledger import FEE_COLLECTOR, NODE, Ledger, Record, Transfer
from .txn import NAMES, Code, Rejected, Submission, account_num, net_transfers, parse

MAX_MEMO_BYTES = 100
MIN_VALID_DURATION_S = 15
MAX_VALID_DURATION_S = 180
DEFAULT_FEE = 100_000  # tinybars (0.001 HBAR): small, but visible in balances

_PRECHECKS = {
    "cryptoTransfer": handlers.precheck_transfer,
    "cryptoApproveAllowance": handlers.precheck_approve,
    "cryptoCreateAccount": handlers.precheck_create,
}


class Processor:
    """Prechecks and handles submissions against a :class:`Ledger` (thread-safe)."""

    def __init__(self, ledger: Ledger, *, fee: int = DEFAULT_FEE, node: int = NODE):
        if fee < 0:
            raise ValueError("fee must not be negative")
        self.ledger = ledger
        self.fee = fee
        self.node = node
        # When True a duplicate passes precheck and reaches consensus as a
        # DUPLICATE_TRANSACTION record, as happens on a real network when a client
        # retries through a second node; the mirror then lists several records per id.
        self.duplicates_reach_consensus = False

    def submit(self, request: transaction_pb2.Transaction) -> int:
        """Precheck and handle one transaction; returns the precheck code (OK or an error)."""
        try:
            sub = parse(request)
            # One lock for precheck + handle: two racing submissions of the same id must
            # not both pass the duplicate check.
            with self.ledger.lock:
                if self._precheck(sub):
                    self._record_duplicate(sub)
                else:
                    self._handle(sub)
        except Rejected as rejected:
            return rejected.code
        return Code.OK

    def _precheck(self, sub: Submission) -> bool:
        """Raise Rejected on a precheck failure; return True for a duplicate let through."""
        body, ledger = sub.body, self.ledger
        if account_num(body.nodeAccountID) != self.node:
            raise Rejected(Code.INVALID_NODE_ACCOUNT)
        if sub.key.scheduled or sub.key.nonce:
            raise Rejected(Code.TRANSACTION_ID_FIELD_NOT_ALLOWED)
        memo = body.memo.encode()
        if len(memo) > MAX_MEMO_BYTES:
            raise Rejected(Code.MEMO_TOO_LONG)
        if b"\x00" in memo:
            raise Rejected(Code.INVALID_ZERO_BYTE_IN_STRING)
        duration = body.transactionValidDuration.seconds
        if not MIN_VALID_DURATION_S <= duration <= MAX_VALID_DURATION_S:
            raise Rejected(Code.INVALID_TRANSACTION_DURATION)
        now, start = ledger.now_ns(), sub.key.valid_start_ns
        if start > now:
            raise Rejected(Code.INVALID_TRANSACTION_START)
        if start + duration * 1_000_000_000 <= now:
            raise Rejected(Code.TRANSACTION_EXPIRED)
        duplicate = sub.key in ledger.records
        if duplicate and not self.duplicates_reach_consensus:
            raise Rejected(Code.DUPLICATE_TRANSACTION)
        payer = ledger.accounts.get(sub.key.payer)
        if payer is None:
            raise Rejected(Code.PAYER_ACCOUNT_NOT_FOUND)
        if not sub.signed_by(payer.key_type, payer.public_key):
            raise Rejected(Code.INVALID_SIGNATURE)
        if body.transactionFee < self.fee:
            raise Rejected(Code.INSUFFICIENT_TX_FEE)
        if payer.balance < self.fee:
            raise Rejected(Code.INSUFFICIENT_PAYER_BALANCE)
        _PRECHECKS[sub.kind](getattr(body, sub.kind))
        return duplicate

    def _handle(self, sub: Submission) -> None:
        ledger, payer = self.ledger, sub.key.payer
        ts = ledger.next_consensus_ns()
        node_share = self.fee // 20
        fee_moves = [Transfer(payer, -self.fee), Transfer(self.node, node_share),
                     Transfer(FEE_COLLECTOR, self.fee - node_share)]
        for move in fee_moves:
            ledger.adjust_balance(move.account, move.amount, ts)
        created = None
        try:
            if sub.kind == "cryptoTransfer":
                moves = handlers.handle_transfer(ledger, sub, ts)
            elif sub.kind == "cryptoApproveAllowance":
                moves = handlers.handle_approve(ledger, sub, ts)
            else:
                moves, created = handlers.handle_create(ledger, sub, ts)
            status = "SUCCESS"
        except Rejected as failed:
            moves, status = [], Code.Name(failed.code)
        ledger.add_record(self._record(sub, ts, status, fee_moves + moves, self.fee, created))

    def _record_duplicate(self, sub: Submission) -> None:
        # A duplicate that reached consensus has no effect and the submitting node, not
        # the payer, pays for it: nothing moves on the payer's side.
        ts = self.ledger.next_consensus_ns()
        self.ledger.add_record(self._record(sub, ts, "DUPLICATE_TRANSACTION", [], 0, None))

    def _record(self, sub: Submission, ts: int, status: str, moves: list[Transfer], fee: int,
                created: int | None) -> Record:
        return Record(
            key=sub.key, consensus_ns=ts, name=NAMES[sub.kind], status=status,
            memo=sub.body.memo.encode(), transfers=net_transfers(moves), charged_fee=fee,
            max_fee=sub.body.transactionFee, valid_duration_s=sub.body.transactionValidDuration.seconds,
            node=self.node, tx_hash=sub.tx_hash, created=created,
        )
