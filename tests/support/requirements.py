"""A well-formed x402 EVM `exact` requirement for pure tests (no chain behind it)."""

from chains.x402 import PaymentRequirements

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def req(**kw) -> PaymentRequirements:
    """The test USDC's requirement on anvil's chain; keyword arguments override fields."""
    base = dict(
        scheme="exact",
        network="eip155:31337",
        amount="1000",
        asset=TOKEN,
        payTo=MERCHANT,
        maxTimeoutSeconds=60,
        extra={"name": "USD Coin", "version": "2"},
    )
    base.update(kw)
    return PaymentRequirements.model_validate(base)
