"""x402 reason codes and the error that carries them (chain-agnostic, no I/O)."""

from __future__ import annotations

# --- reason codes (x402 spec section 9, plus SDK / Tollgate additions) -------

INSUFFICIENT_FUNDS = "insufficient_funds"
INVALID_VALID_AFTER = "invalid_exact_evm_payload_authorization_valid_after"
INVALID_VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"
INVALID_VALUE = "invalid_exact_evm_payload_authorization_value"
INVALID_SIGNATURE = "invalid_exact_evm_payload_signature"
RECIPIENT_MISMATCH = "invalid_exact_evm_payload_recipient_mismatch"
INVALID_NETWORK = "invalid_network"
INVALID_PAYLOAD = "invalid_payload"
INVALID_PAYMENT_REQUIREMENTS = "invalid_payment_requirements"
INVALID_SCHEME = "invalid_scheme"
UNSUPPORTED_SCHEME = "unsupported_scheme"
INVALID_X402_VERSION = "invalid_x402_version"
INVALID_TRANSACTION_STATE = "invalid_transaction_state"
UNEXPECTED_VERIFY_ERROR = "unexpected_verify_error"
UNEXPECTED_SETTLE_ERROR = "unexpected_settle_error"
# Used by the reference SDKs, not listed in the spec:
NONCE_ALREADY_USED = "invalid_exact_evm_nonce_already_used"
SETTLEMENT_PENDING = "settlement_pending"
MISSING_EIP712_DOMAIN = "missing_eip712_domain"
# Tollgate's own (no spec code exists):
PAYMENT_EXPIRED = "payment_expired"  # authorization expired before it could be settled
INVALID_PAYMENT_IDENTIFIER = "invalid_payment_identifier"


class X402Error(Exception):
    """A payment rejected for ``reason`` (an x402 reason code); ``message`` is for humans."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason
