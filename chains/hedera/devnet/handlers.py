"""Per-transaction-type rules: pure prechecks and consensus-time handling.

``precheck_*`` look at the body only. ``handle_*`` run under the ledger lock after the
fee was charged; they validate everything first and raise :class:`Rejected` *before*
touching state, so a failure leaves only the fee behind. They return the HBAR moves for
the record (and, for create, the new account number).
"""

from __future__ import annotations

from . import keys
from .ledger import AllowanceState, Ledger, Transfer
from .txn import Code, Rejected, Submission, account_num

# -- CryptoTransfer ----------------------------------------------------------------------


def precheck_transfer(body) -> None:
    if body.tokenTransfers:
        raise Rejected(Code.NOT_SUPPORTED)
    amounts = body.transfers.accountAmounts
    if sum(entry.amount for entry in amounts) != 0:
        raise Rejected(Code.INVALID_ACCOUNT_AMOUNTS)
    seen = [entry.accountID.SerializeToString(deterministic=True) for entry in amounts]
    if len(set(seen)) != len(seen):
        raise Rejected(Code.ACCOUNT_REPEATED_IN_ACCOUNT_AMOUNTS)


def handle_transfer(ledger: Ledger, sub: Submission, ts: int) -> list[Transfer]:
    """Validate then apply an HBAR transfer list.

    A debit with ``is_approval`` spends the allowance ``owner -> payer`` (the spender is
    always the transaction's payer) and needs no owner signature; any other debit needs
    the debited account's signature. ``is_approval`` on a credit means nothing."""
    payer = sub.key.payer
    moves: list[Transfer] = []
    for entry in sub.body.cryptoTransfer.transfers.accountAmounts:
        num = account_num(entry.accountID)
        if num is None or num not in ledger.accounts:
            raise Rejected(Code.INVALID_ACCOUNT_ID)
        moves.append(Transfer(num, entry.amount, entry.is_approval and entry.amount < 0))
    # Signatures first, before any state is consulted, as in the node's handle workflow.
    for move in moves:
        if move.amount < 0 and not move.is_approval and move.account != payer:
            account = ledger.accounts[move.account]
            if not sub.signed_by(account.key_type, account.public_key):
                raise Rejected(Code.INVALID_SIGNATURE)
    for move in moves:
        if move.is_approval:
            allowance = ledger.allowances.get((move.account, payer))
            if allowance is None:
                raise Rejected(Code.SPENDER_DOES_NOT_HAVE_ALLOWANCE)
            if -move.amount > allowance.amount:
                raise Rejected(Code.AMOUNT_EXCEEDS_ALLOWANCE)
    for move in moves:
        if move.amount < 0 and ledger.accounts[move.account].balance + move.amount < 0:
            raise Rejected(Code.INSUFFICIENT_ACCOUNT_BALANCE)
    for move in moves:
        ledger.adjust_balance(move.account, move.amount, ts)
        if move.is_approval:
            _spend_allowance(ledger, move.account, payer, -move.amount, ts)
    return moves


def _spend_allowance(ledger: Ledger, owner: int, spender: int, amount: int, ts: int) -> None:
    current = ledger.allowances[(owner, spender)]
    left = AllowanceState(current.amount - amount, current.granted, current.since_ns)
    # Consensus forgets an exhausted allowance; the mirror keeps showing it at amount 0.
    ledger.set_allowance(owner, spender, left if left.amount else None, ts, mirror_state=left)


# -- CryptoApproveAllowance --------------------------------------------------------------


def precheck_approve(body) -> None:
    if body.nftAllowances or body.tokenAllowances:
        raise Rejected(Code.NOT_SUPPORTED)
    if not body.cryptoAllowances:
        raise Rejected(Code.EMPTY_ALLOWANCES)
    if any(allowance.amount < 0 for allowance in body.cryptoAllowances):
        raise Rejected(Code.NEGATIVE_ALLOWANCE_AMOUNT)


def handle_approve(ledger: Ledger, sub: Submission, ts: int) -> list[Transfer]:
    """Set HBAR allowances. Each approve *replaces* the previous (owner, spender) amount;
    an amount of 0 removes the allowance. The owner (default: the payer) must sign."""
    payer = sub.key.payer
    grants: list[tuple[int, int, int]] = []
    for allowance in sub.body.cryptoApproveAllowance.cryptoAllowances:
        owner = account_num(allowance.owner) if allowance.HasField("owner") else payer
        if owner is None or owner not in ledger.accounts:
            raise Rejected(Code.INVALID_ALLOWANCE_OWNER_ID)
        spender = account_num(allowance.spender)
        if spender is None or spender not in ledger.accounts:
            raise Rejected(Code.INVALID_ALLOWANCE_SPENDER_ID)
        if owner == spender:
            raise Rejected(Code.SPENDER_ACCOUNT_SAME_AS_OWNER)
        account = ledger.accounts[owner]
        if owner != payer and not sub.signed_by(account.key_type, account.public_key):
            raise Rejected(Code.INVALID_SIGNATURE)
        grants.append((owner, spender, allowance.amount))
    for owner, spender, amount in grants:
        ledger.set_allowance(owner, spender, AllowanceState(amount, amount, ts), ts)
    return []


# -- CryptoCreate ------------------------------------------------------------------------


def create_key(body) -> tuple[str, bytes]:
    """(key type, normalized public key) of a CryptoCreate body; raises Rejected."""
    if not body.HasField("key"):
        raise Rejected(Code.KEY_REQUIRED)
    kind = body.key.WhichOneof("key")
    key_type = {"ed25519": keys.ED25519, "ECDSA_secp256k1": keys.ECDSA_SECP256K1}.get(kind)
    if key_type is None:
        raise Rejected(Code.NOT_SUPPORTED)  # key lists, thresholds, contracts: not modelled
    try:
        return key_type, keys.public_key_from_proto_bytes(key_type, getattr(body.key, kind))
    except ValueError:
        raise Rejected(Code.BAD_ENCODING) from None


def precheck_create(body) -> None:
    create_key(body)
    if body.initialBalance >= 2**63:  # the SDK sends negatives as huge uint64 values
        raise Rejected(Code.INVALID_INITIAL_BALANCE)


def handle_create(ledger: Ledger, sub: Submission, ts: int) -> tuple[list[Transfer], int]:
    body = sub.body.cryptoCreateAccount
    key_type, public_key = create_key(body)
    payer = sub.key.payer
    if ledger.accounts[payer].balance < body.initialBalance:
        raise Rejected(Code.INSUFFICIENT_PAYER_BALANCE)
    account = ledger.create_account(key_type, public_key, 0, at_ns=ts, memo=body.memo)
    moves = [Transfer(payer, -body.initialBalance), Transfer(account.num, body.initialBalance)]
    for move in moves:
        ledger.adjust_balance(move.account, move.amount, ts)
    return moves, account.num
