"""Tables (SQLAlchemy Core). Each package uses only its own tables:

- gateway: `origin_secrets`
- chains/x402 rails (via gateway.payments): `payments`, `payment_responses`
- sessions: added by the sessions migrations

Amounts are integer atomic units stored as BigInteger (tinybars fit; 6-decimal USDC up to
9.2e12 whole units fits). Times are unix seconds as floats only where they are
timestamps, never money.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

# Current and previous origin secret of a paygate, sealed with the master key.
origin_secrets = Table(
    "origin_secrets", metadata,
    Column("paygate_id", String(64), primary_key=True),
    Column("current_sealed", Text, nullable=False),
    Column("previous_sealed", Text, nullable=True),
    Column("previous_valid_until", Float, nullable=True),
    Column("rotated_at", Float, nullable=False),
)

# One row per x402 payment the gateway has seen, keyed by what makes it unique on chain
# (network + asset + payer + nonce): the INSERT that claims the key is the replay guard.
payments = Table(
    "payments", metadata,
    Column("id", String(64), primary_key=True),
    Column("claim_key", String(200), nullable=False, unique=True),
    Column("payment_identifier", String(200), nullable=True),
    Column("request_fingerprint", String(64), nullable=False),
    Column("rail", String(32), nullable=False),
    Column("paygate_id", String(64), nullable=False),
    Column("network", String(64), nullable=False),
    Column("asset", String(100), nullable=False),
    Column("payer", String(100), nullable=False),
    Column("pay_to", String(100), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("settlement", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("tx_hash", String(100), nullable=True),
    Column("error", String(200), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("paygate_id", "payment_identifier", name="uq_payments_identifier"),
)

# The response first served for a payment, replayed when the same payment comes again.
payment_responses = Table(
    "payment_responses", metadata,
    Column("payment_id", String(64), primary_key=True),
    Column("status", Integer, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("complete", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)
