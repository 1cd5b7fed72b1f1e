"""Opening a session: issue a nonce, check the proof of control and the allowance on the
mirror, then spend the nonce and store the session in one transaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from chains.hedera.ids import is_account_id, normalize_account_id, to_mirror_tx_id
from chains.hedera.mirror import MirrorNotFound, MirrorUnavailable
from sessions.lifecycle import new_token
from sessions.proof import (
    Challenge,
    ProofError,
    check_memo_record,
    check_signature,
    decode_signature,
    memo_for,
)
from sessions.records import Session, SessionRecords
from store.clock import Clock

_NONCE_SHAPE = re.compile(r"[0-9a-f]{32}")  # what SessionRecords.issue_nonce hands out


class Mirror(Protocol):
    async def crypto_allowance(self, owner: str, spender: str): ...
    async def account(self, account_id: str): ...
    async def wait_transaction(self, tx_id: str, timeout: float = 30.0, interval: float = 0.5): ...


@dataclass(frozen=True)
class Terms:
    """What one paygate's sessions are: who spends, at what price, for how long."""

    paygate_id: str
    network: str
    spender: str
    unit_price: int  # tinybars per unit
    gateway_url: str  # the gateway's public URL, named in the signed activation message
    session_ttl: float
    nonce_ttl: float = 600.0
    proof_wait: float = 15.0  # how long to wait for the mirror to ingest the approval


class ActivationError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _account(value: Any, field: str) -> str:
    if not isinstance(value, str) or not is_account_id(value):
        raise ActivationError(400, "invalid_account_id", f"{field} must be an account id such as 0.0.1234")
    return normalize_account_id(value)


class Activation:
    def __init__(self, records: SessionRecords, mirror: Mirror, clock: Clock) -> None:
        self.records = records
        self.mirror = mirror
        self.clock = clock

    @staticmethod
    def _challenge(terms: Terms, owner: str, nonce: str, issued_at: float,
                   expires_at: float) -> Challenge:
        return Challenge(gateway_url=terms.gateway_url, account_id=owner, spender=terms.spender,
                         network=terms.network, paygate=terms.paygate_id, nonce=nonce,
                         issued_at=issued_at, expires_at=expires_at)

    async def challenge(self, terms: Terms, account_id: Any) -> dict[str, Any]:
        owner = _account(account_id, "account_id")
        nonce, expires = await self.records.issue_nonce(terms.paygate_id, owner, terms.nonce_ttl)
        row = await self.records.nonce(nonce)
        message = self._challenge(terms, owner, nonce, row.created_at, expires).message()
        return {"nonce": nonce, "memo": memo_for(nonce), "message": message,
                "gateway_url": terms.gateway_url,
                "account_id": owner, "spender": terms.spender, "paygate": terms.paygate_id,
                "network": terms.network, "price_tinybars": terms.unit_price,
                "expires_at": int(expires)}

    async def activate(self, terms: Terms, *, account_id: Any, nonce: Any,
                       transaction_id: Any = None, signature: Any = None,
                       message: Any = None) -> tuple[str, Session]:
        """Open a session if the proof holds. `message`, optional beside `signature`, is
        what the client says it signed: only this gateway's own message is accepted."""
        owner = _account(account_id, "account_id")
        if not isinstance(nonce, str) or not nonce:
            raise ActivationError(400, "invalid_nonce", "nonce is required")
        if not _NONCE_SHAPE.fullmatch(nonce):
            # Not one this gateway issues: refused before it reaches the store, which may
            # not even be able to hold it (lone surrogates, NUL).
            raise ActivationError(403, "nonce_invalid", "unknown nonce for this account and paygate")
        if (transaction_id is None) == (signature is None):
            raise ActivationError(400, "invalid_proof",
                                  "give exactly one proof: transaction_id (memo) or signature")
        row = await self.records.nonce(nonce)
        now = self.clock.now()
        if row is None or row.account_id != owner or row.paygate_id != terms.paygate_id:
            raise ActivationError(403, "nonce_invalid", "unknown nonce for this account and paygate")
        if row.used_at is not None:
            raise ActivationError(403, "nonce_used", "this nonce already opened a session")
        if row.expires_at <= now:
            raise ActivationError(403, "nonce_expired", "this nonce has expired; ask for a new one")
        try:
            if transaction_id is not None:
                if not isinstance(transaction_id, str):
                    raise ActivationError(400, "invalid_transaction_id", "transaction_id must be a string")
                try:
                    tx_id = to_mirror_tx_id(transaction_id)
                except ValueError:
                    raise ActivationError(400, "invalid_transaction_id",
                                          "transaction_id must look like 0.0.123@1700000000.000000001") from None
                record = await self.mirror.wait_transaction(tx_id, timeout=terms.proof_wait)
                check_memo_record(record, owner=owner, nonce=nonce)
            else:
                if not isinstance(signature, str):
                    raise ActivationError(400, "invalid_signature", "signature must be a string")
                if message is not None and not isinstance(message, str):
                    raise ActivationError(400, "invalid_message", "message must be a string")
                challenge = self._challenge(terms, owner, nonce, row.created_at, row.expires_at)
                if message is not None:
                    challenge.check_message(message)
                info = await self.mirror.account(owner)
                try:
                    check_signature(info.key_type, info.key_hex, challenge.message(),
                                    decode_signature(signature))
                except ProofError as exc:
                    if exc.code != "proof_bad_signature":
                        raise
                    raise ProofError(exc.code, f"{exc.message}. {challenge.expected()}") from None
            read_at = self.clock.now()
            allowance = await self.mirror.crypto_allowance(owner, terms.spender)
        except ProofError as exc:
            raise ActivationError(403, exc.code, exc.message) from None
        except MirrorNotFound:
            raise ActivationError(403, "account_unknown", f"the mirror knows no account {owner}") from None
        except MirrorUnavailable:
            raise ActivationError(503, "mirror_unavailable",
                                  "the mirror node is unavailable; try again") from None
        if allowance is None:
            raise ActivationError(402, "allowance_missing",
                                  f"approve an HBAR allowance to {terms.spender} first")
        if allowance.amount < terms.unit_price:
            raise ActivationError(402, "allowance_too_small",
                                  f"the allowance ({allowance.amount} tinybars) is below the "
                                  f"price of one call ({terms.unit_price})")
        token = new_token()
        session = await self.records.create_session(
            nonce=nonce, token=token, paygate_id=terms.paygate_id, owner=owner,
            spender=terms.spender, allowance=allowance.amount, ttl=terms.session_ttl,
            read_at=read_at)
        if session is None:
            raise ActivationError(403, "nonce_used", "this nonce already opened a session")
        return token, session
