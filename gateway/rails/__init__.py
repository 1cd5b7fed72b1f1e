"""Payment rails: x402 on EVM, x402 on Hedera, Hedera allowance sessions."""

from gateway.rails.base import (  # noqa: F401  (re-exported seam)
    Charge,
    Offer,
    PaidRequest,
    PaymentRejected,
    Priced,
    Rail,
    StoredResponse,
)
