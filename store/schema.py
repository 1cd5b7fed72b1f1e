"""Tables (SQLAlchemy Core). Each package uses only its own tables:

- gateway: `origin_secrets`
- chains.payments (the store of the x402 rails in gateway.rails.x402): `payments`,
  `payment_responses`
- sessions: added by the sessions migrations

Amounts are integer atomic units. x402 payment amounts are `Uint256` (any EVM token
amount: NUMERIC(78,0) on PostgreSQL, zero-padded decimal text on SQLite, never a float);
session amounts are BigInteger (tinybars fit). Times are unix seconds as floats only where
they are timestamps, never money.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import (
    NUMERIC,
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
from sqlalchemy.types import TypeDecorator
from sqlalchemy import Index, text

metadata = MetaData()

UINT256_DIGITS = 78  # 2**256 - 1 has 78 decimal digits


class Uint256(TypeDecorator):
    """An unsigned 256-bit integer, exact on every store: NUMERIC(78,0) on PostgreSQL and
    78-digit zero-padded text on SQLite (whose INTEGER stops at 2**63 and whose NUMERIC
    affinity turns larger numbers into floats). Zero padding keeps text order = number
    order. Sum such columns in Python, not in SQL (SQLite would add them as floats)."""

    impl = String(UINT256_DIGITS)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(NUMERIC(UINT256_DIGITS, 0))
        return dialect.type_descriptor(String(UINT256_DIGITS))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
            raise ValueError(f"not a uint256: {value!r}")
        if dialect.name == "postgresql":
            return Decimal(value)
        return f"{value:0{UINT256_DIGITS}d}"

    def process_result_value(self, value, dialect):
        return None if value is None else int(value)


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
    Column("amount", Uint256, nullable=False),
    Column("state", String(16), nullable=False),
    Column("settlement", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("tx_hash", String(100), nullable=True),
    Column("error", String(200), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", Float, nullable=True),
    # Settlement worker (migration 6): the signed transaction, written before it is sent;
    # which instance holds the lease; the authorization's expiry, to settle in that order.
    Column("raw_tx", Text, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("valid_before", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # sha256 of the request the payment was first presented with (method, path and query,
    # body digest): its stored response is replayed to that request only.
    Column("request_digest", String(64), nullable=True),
    # `before` settlement: until when the current origin call owns forwarding; NULL when
    # no (further) forward is due. An origin that failed sets it to "now": a retry with
    # the same payment may forward again.
    Column("forward_until", Float, nullable=True),
    # sha256 of the client address that first presented the payment: without a
    # payment-identifier, only that address gets a `before` retry forwarded.
    Column("client_digest", String(64), nullable=True),
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
    # 0 when the body was over the replay size limit and not kept (`body` is empty).
    Column("body_kept", Integer, nullable=False, server_default="1"),
    Column("body_size", BigInteger, nullable=True),
)

# A signed settlement transaction shared by several payments (one batch transaction): its
# bytes are stored once, written before it is sent; each payment names it by `tx_hash`.
settlement_txs = Table(
    "settlement_txs", metadata,
    Column("tx_hash", String(100), primary_key=True),
    Column("raw_tx", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# --- Hedera allowance sessions (sessions package) ---------------------------------------

# Activation nonces: issued to an account, proven by an approval memo or a signature.
session_nonces = Table(
    "session_nonces", metadata,
    Column("nonce", String(64), primary_key=True),
    Column("paygate_id", String(64), nullable=False),
    Column("account_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

# One row per session: its owner, state, expiry and what it spent (for display). The money
# lives in `session_allowances`, shared by all sessions of the owner; the session's own
# `allowance`, `outstanding` and `mirror_at` columns were its private view before schema
# version 4 and are no longer read.
sessions = Table(
    "sessions", metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("paygate_id", String(64), nullable=False),
    Column("owner", String(32), nullable=False),
    Column("spender", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("allowance", BigInteger, nullable=False),
    Column("outstanding", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("mirror_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("lease_until", Float, nullable=True),
)

# Each charged call; the (session, idempotency key) pair is the idempotency claim.
session_charges = Table(
    "session_charges", metadata,
    Column("id", String(32), primary_key=True),
    Column("session_id", String(32), nullable=False, index=True),
    Column("idempotency_key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | kept | reversed
    Column("pull_id", String(32), nullable=True, index=True),
    Column("created_at", Float, nullable=False),
    Column("status", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    UniqueConstraint("session_id", "idempotency_key", name="uq_session_charges_key"),
)

# Approved transfers that collect kept charges on chain. Bytes and id are stored before
# the first submission, so a retry resubmits the very same transaction.
session_pulls = Table(
    "session_pulls", metadata,
    Column("id", String(32), primary_key=True),
    Column("session_id", String(32), nullable=False, index=True),
    Column("owner", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("tx_id", String(64), nullable=False, unique=True),
    Column("tx_bytes", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("valid_until", Float, nullable=False),
    Column("error", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
)

# One row per (owner, spender): the allowance that every session of that owner at this
# gateway draws from. `allowance` is what the mirror showed at `mirror_at`; `outstanding` is
# what was charged since, over all the owner's sessions, and is not yet visible on the
# mirror (unpulled charges, and pulls the mirror has not ingested). A call may be charged
# while allowance - outstanding >= price. `lease_until` leases the mirror refresh;
# `pull_lease_until` the pulls. A pull refused on chain for allowance reasons sets
# `refused_at` and `pull_after` (back-off, `refusals` in a row): no pull before a mirror
# read later than `refused_at`, nor before `pull_after`.
session_allowances = Table(
    "session_allowances", metadata,
    Column("owner", String(32), primary_key=True),
    Column("spender", String(32), primary_key=True),
    Column("allowance", BigInteger, nullable=False),
    Column("outstanding", BigInteger, nullable=False),
    Column("mirror_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),
    Column("pull_lease_until", Float, nullable=True),
    Column("pull_after", Float, nullable=True),
    Column("refused_at", Float, nullable=True),
    Column("refusals", Integer, nullable=False, default=0),
)

# --- Provider admin API (migration 7) ---------------------------------------------------

# Admin API keys: `pk_<24 hex>` with a sealed secret; `provider` scopes a provider key
# (NULL with operator = 1: sees everything). Rotation keeps the previous secret valid
# until `previous_valid_until`.
api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("provider", String(64), nullable=True),
    Column("operator", Integer, nullable=False),
    Column("secret_sealed", Text, nullable=False),
    Column("previous_sealed", Text, nullable=True),
    Column("previous_valid_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# Admin request signatures seen inside the timestamp window: the INSERT is the replay
# guard shared by every instance on the database. Rows past `expires_at` are purged.
admin_signatures = Table(
    "admin_signatures", metadata,
    Column("signature", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# Paygates every instance routes: the config file's (`source` = "config", written at start
# by id) and the admin API's (`source` = "api"). `body` is the paygate as JSON, in the
# config file's shape. `paygate_state.version` is bumped in the same transaction as any
# change; instances poll it and rebuild their router when it moves.
runtime_paygates = Table(
    "runtime_paygates", metadata,
    Column("id", String(64), primary_key=True),
    Column("provider", String(64), nullable=True, index=True),
    Column("source", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

paygate_state = Table(
    "paygate_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# Webhooks: endpoints per provider, an outbox of events (written in the transaction that
# caused them), and one delivery per (event, endpoint), leased by the instance sending it.
webhook_endpoints = Table(
    "webhook_endpoints", metadata,
    Column("id", String(32), primary_key=True),
    Column("provider", String(64), nullable=True, index=True),
    Column("url", Text, nullable=False),
    Column("secret_sealed", Text, nullable=False),
    Column("events", Text, nullable=False),  # JSON list; ["*"] = every event
    Column("low_threshold", BigInteger, nullable=True),  # allowance.low below this (atomic)
    Column("enabled", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

webhook_events = Table(
    "webhook_events", metadata,
    Column("id", String(32), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("paygate_id", String(64), nullable=True),
    Column("provider", String(64), nullable=True),
    Column("data", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("fanned_out", Integer, nullable=False, index=True),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", String(32), primary_key=True),
    Column("event_id", String(32), nullable=False, index=True),
    Column("endpoint_id", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False, index=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(200), nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_delivery"),
)

# Paid files: what a file paygate sells. Local files live under the configured directory
# as `stored` (a random name: the public name never reaches the file system); S3 files
# are a bucket and key.
paid_files = Table(
    "paid_files", metadata,
    Column("paygate_id", String(64), primary_key=True),
    Column("name", String(160), primary_key=True),
    Column("storage", String(8), nullable=False),  # local | s3
    Column("stored", Text, nullable=True),
    Column("bucket", Text, nullable=True),
    Column("object_key", Text, nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("content_type", String(255), nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
)

# Prepaid tokens sold by plan (checkout): the bearer token is stored only as its sha256.
# `remaining` is the quota left, in units; `units_total` what was ever bought (top-ups add).
prepaid_tokens = Table(
    "prepaid_tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("paygate_id", String(64), nullable=False, index=True),
    Column("plan_id", String(64), nullable=False),
    Column("billing", String(8), nullable=False),  # paid | free
    Column("units_total", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("warn_below", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # active | revoked
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# One row per call charged to a prepaid token, keyed by (token, idempotency key) as
# session_charges: the stored response is replayed to a retry of the same key.
token_charges = Table(
    "token_charges", metadata,
    Column("id", String(32), primary_key=True),
    Column("token_id", String(32), nullable=False, index=True),
    Column("idempotency_key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | kept
    Column("created_at", Float, nullable=False),
    Column("status", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    UniqueConstraint("token_id", "idempotency_key", name="uq_token_charges_key"),
)
# The charges still pending (in flight, or left by a gateway that died mid-call), for
# the sweep that reverses abandoned ones: partial, so kept charges cost it nothing.
Index("ix_token_charges_pending", token_charges.c.created_at,
      sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'"))

# Free plans taken: once per (paygate, email hash); counted per client address.
free_claims = Table(
    "free_claims", metadata,
    Column("paygate_id", String(64), primary_key=True),
    Column("email_hash", String(64), primary_key=True),
    Column("plan_id", String(64), nullable=False),
    Column("client", String(64), nullable=False, index=True),
    Column("token_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)
