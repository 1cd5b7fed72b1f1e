"""The gateway's configuration: a TOML file validated with pydantic.

`load_config(path)` returns a `Config` or raises `ConfigError` whose message names each
bad key (`paygates[0].target: ...`) and what is wrong with it. Money never passes
through a float: prices are written as strings (or integers) of whole asset units and
converted once, here, to integer atomic units (`price_atomic(cfg, paygate, asset_id)`).
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.ssrf import is_private_host

RAILS = ("x402-evm", "x402-hedera", "hedera-session", "prepaid-token")
Rail = Literal["x402-evm", "x402-hedera", "hedera-session", "prepaid-token"]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}


class ConfigError(Exception):
    """A config the gateway refuses to start with; the message is for a person."""


def _parse_size(value: Any) -> int:
    """`10485760`, `"10MiB"`, `"512 KiB"`, `"1GB"` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 10485760 or \"10MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ValueError("must be a size such as 10485760 or \"10MiB\"")


ByteSize = Annotated[int, BeforeValidator(_parse_size)]


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(
            f"write prices as strings of whole units (e.g. \"{value}\"), never floats"
        )
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a decimal string such as \"0.001\"")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise ValueError("must be a finite, non-negative amount")
    return d


Price = Annotated[Decimal, BeforeValidator(_no_float)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.rstrip("/")


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8402, ge=0, le=65535)
    public_url: str | None = None
    max_request_bytes: ByteSize = 10 * 1024**2
    allow_private_targets: bool = False
    shutdown_grace_seconds: float = Field(30, ge=0)
    settlement_interval_seconds: float = Field(1.0, gt=0)
    # How long a settlement worker holds a payment without renewing (heartbeat: a third of
    # it); a crashed instance's payments are taken over once it lapses.
    settlement_lease_seconds: float = Field(5.0, gt=0)
    session_api_per_minute: int = Field(30, ge=0)  # per client address; 0 = unlimited
    # Middleware mode: an authorization not completed within this is reversed (as a 504).
    authorize_timeout_seconds: float = Field(300, gt=0)

    _url = field_validator("public_url")(lambda v: v if v is None else _check_http_url(v))


class DatabaseConfig(_Model):
    url: str = "sqlite+aiosqlite:///var/tollgate.db"
    master_key_env: str = "TOLLGATE_MASTER_KEY"
    master_key_file: str = "var/master.key"

    @field_validator("url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v


class Eip3009Asset(_Model):
    type: Literal["eip3009"]
    network: str
    address: str
    decimals: int = Field(6, ge=0, le=36)
    eip712_name: str = "USD Coin"
    eip712_version: str = "2"

    @field_validator("network")
    @classmethod
    def _caip2(cls, v: str) -> str:
        if not re.fullmatch(r"eip155:[1-9]\d*", v):
            raise ValueError("must be a CAIP-2 EVM network id such as eip155:8453")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", v):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return v


class HbarAsset(_Model):
    type: Literal["hbar"]
    network: str = "hedera:testnet"
    decimals: Literal[8] = 8

    @field_validator("network")
    @classmethod
    def _caip2(cls, v: str) -> str:
        if not re.fullmatch(r"hedera:[a-z0-9-]+", v):
            raise ValueError("must be a CAIP-2 Hedera network id such as hedera:testnet")
        return v


Asset = Annotated[Eip3009Asset | HbarAsset, Field(discriminator="type")]


class EvmNetworkConfig(_Model):
    """How the gateway reaches one EVM chain and who pays gas for settlement."""

    rpc_url: str
    settler_key_env: str | None = None
    facilitator_url: str | None = None
    facilitator_api_key_env: str | None = None  # bearer key sent to facilitator_url
    rpc_cache_seconds: float = Field(2.0, ge=0)
    receipt_timeout_seconds: float = Field(30, gt=0)
    deferred_exposure_limit: int = Field(0, ge=0)  # atomic units per payer; 0 = 10 x price
    # maxTimeoutSeconds asked on deferred paygates: room to settle after a crash and retry
    deferred_max_timeout_seconds: int = Field(300, ge=60)
    # SettlementBatch contract on this chain: many settlements per transaction. Without
    # it each settlement is its own transaction (pipelined: no wait for earlier receipts).
    batch_contract: str | None = None
    batch_max_items: int = Field(200, ge=1, le=400)  # ~70k gas each; a block holds ~419
    # how long the first settlement of a batch waits for others (a full batch goes at once)
    batch_linger_seconds: float = Field(0.02, ge=0, le=60)

    _urls = field_validator("rpc_url", "facilitator_url")(
        lambda v: v if v is None else _check_http_url(v))

    @model_validator(mode="after")
    def _one_settlement_path(self) -> "EvmNetworkConfig":
        if not self.settler_key_env and not self.facilitator_url:
            raise ValueError("set settler_key_env (the gateway pays gas) or facilitator_url")
        return self

    @field_validator("batch_contract")
    @classmethod
    def _batch_address(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"0x[0-9a-fA-F]{40}", v):
            raise ValueError("batch_contract must be a 0x-prefixed 20-byte address")
        return v

    @model_validator(mode="after")
    def _key_for_a_facilitator(self) -> "EvmNetworkConfig":
        if self.facilitator_api_key_env and not self.facilitator_url:
            raise ValueError("facilitator_api_key_env needs facilitator_url")
        return self


class FacilitatorConfig(_Model):
    """The x402 facilitator API the gateway serves to other servers (`/facilitator/*`).
    Off by default: when on, it pays gas for whoever holds the key, so it settles only
    what is configured here."""

    enabled: bool = False
    api_key_env: str | None = None  # env var holding the bearer key callers must send
    assets: list[str] | None = None  # asset ids it settles; None = every eip3009 asset
    pay_to: list[str] = []  # if set, the only payTo addresses it settles for
    requests_per_minute: int = Field(60, ge=0)  # per API key; 0 = unlimited


class HederaConfig(_Model):
    network: str = "hedera:testnet"
    nodes: dict[str, str] | None = None  # "host:port" -> node account id; None = SDK defaults
    mirror_url: str
    account_id: str
    private_key_env: str
    mirror_ttl_seconds: float = Field(10, gt=0)
    pull_interval_seconds: float = Field(30, gt=0)
    session_ttl_seconds: float = Field(86400, gt=0)

    _url = field_validator("mirror_url")(_check_http_url)

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+", v):
            raise ValueError("must be a Hedera account id such as 0.0.1234")
        return v


class ResourceRule(_Model):
    method: str = "*"
    path: str
    units: int = Field(ge=0)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        v = v.upper()
        if v != "*" and not re.fullmatch(r"[A-Z]+", v):
            raise ValueError("must be an HTTP method such as GET, or *")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v


_HEADER_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*")


class OriginAuthConfig(_Model):
    """How the origin recognises the gateway (recipes in gateway.origin). `request`
    resists replay and is the default; `hmac` / `plaintext` keep the Sigwei recipes and,
    unless `sign_request = false`, also carry the `request`-mode headers.
    `header_prefix` names those headers (`X-PayFence` for PayFence origins);
    `legacy_path_line` signs a query-less path without its `?`, for origins still running
    a copy of the first release's verifier."""

    mode: Literal["hmac", "plaintext", "request"] = "request"
    secret_env: str | None = None
    rotation_grace_seconds: int = Field(3600, ge=0)
    header_prefix: str = "X-Tollgate"
    sign_request: bool = True
    legacy_path_line: bool = False

    @field_validator("header_prefix")
    @classmethod
    def _header_prefix(cls, v: str) -> str:
        if not _HEADER_PREFIX.fullmatch(v) or len(v) > 40:
            raise ValueError("must be a header name prefix such as X-PayFence")
        return v

    @model_validator(mode="after")
    def _request_mode_signs(self) -> "OriginAuthConfig":
        if self.mode == "request" and not self.sign_request:
            raise ValueError("sign_request = false needs mode hmac or plaintext")
        return self

    @property
    def signs_request(self) -> bool:
        return self.mode == "request" or self.sign_request


_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class PlanConfig(_Model):
    """A plan sold at checkout: `units` of quota on a prepaid token, for `prices` (one
    price per asset, for the whole plan). Without prices it is a free plan: taken once
    per email per paygate, at most `per_address_limit` times per client address."""

    id: str
    units: int = Field(gt=0)
    prices: dict[str, Price] = {}
    per_address_limit: int = Field(1, ge=1)
    warn_below: int | None = Field(None, ge=1)  # quota.warning threshold; default a tenth

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _checked_id(v)

    @property
    def free(self) -> bool:
        return not self.prices


def _checked_id(v: str) -> str:
    if not _ID.fullmatch(v):
        raise ValueError("must be lowercase letters, digits, - or _ (at most 63)")
    return v


class PaygateConfig(_Model):
    id: str
    prefix: str
    host: str | None = None
    target: str
    description: str = ""
    mime_type: str = "application/json"
    default_units: int = Field(1, ge=0)
    rules: list[ResourceRule] = []
    prices: dict[str, Price] = {}
    rails: list[Rail] = []
    pay_to: dict[Literal["evm", "hedera"], str] = {}
    settlement: Literal["before", "after", "deferred"] = "after"
    charge_below_status: int = Field(500, ge=100, le=600)
    timeout_seconds: float = Field(600, gt=0)
    max_response_bytes: ByteSize = 10 * 1024**2
    max_request_bytes: ByteSize | None = None
    allow_private_target: bool | None = None
    origin_auth: OriginAuthConfig = OriginAuthConfig()
    provider: str | None = None  # the provider whose admin keys manage it (None: operator)
    # "files": the paygate sells its uploaded / S3 files (paying answers a download URL)
    kind: Literal["proxy", "files"] = "proxy"
    discoverable: bool = True  # listed in the public discovery document
    plans: list[PlanConfig] = []  # prepaid-token plans sold at /api/checkout/{id}/{plan}

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError("must be lowercase letters, digits, - or _ (at most 63)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "*?#%") or "//" in v:
            raise ValueError("must be a plain path such as /skyroute")
        return v.rstrip("/") or "/"

    _target = field_validator("target")(_check_http_url)

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None and not _ID.fullmatch(v):
            raise ValueError("must be lowercase letters, digits, - or _ (at most 63)")
        return v

    @model_validator(mode="after")
    def _rails_have_prices(self) -> "PaygateConfig":
        if len(set(self.rails)) != len(self.rails):
            raise ValueError("rails: each rail may appear once")
        return self

    @model_validator(mode="after")
    def _plans_take_tokens(self) -> "PaygateConfig":
        if len({p.id for p in self.plans}) != len(self.plans):
            raise ValueError("plans: each plan id may appear once")
        if self.plans and "prepaid-token" not in self.rails:
            self.rails.append("prepaid-token")  # a plan's token pays through this rail
        return self

    def plan(self, plan_id: str) -> PlanConfig | None:
        return next((p for p in self.plans if p.id == plan_id), None)


class FilesConfig(_Model):
    """Paid files: uploads are kept under `directory`, at most `max_upload_bytes` each;
    a paid download URL is valid for `url_ttl_seconds`."""

    directory: str = "var/files"
    max_upload_bytes: ByteSize = 1024**3
    url_ttl_seconds: float = Field(600, gt=0)
    s3_endpoint_url: str | None = None  # an S3-compatible server; None: AWS
    s3_region: str = "us-east-1"


class ReplayConfig(_Model):
    """Stored responses of x402 payments, replayed to a retry of the same request: kept at
    most `retention_seconds` (and never past the authorization's validity), and only
    bodies of at most `max_bytes` (a larger one is answered 409 on replay)."""

    retention_seconds: float = Field(600, gt=0)
    max_bytes: ByteSize = 1024**2


class WalletConfig(_Model):
    """The wallet page at `/`. WalletConnect needs a (free) project id from
    https://cloud.reown.com; without one the page explains how to get it."""

    walletconnect_project_id: str | None = None


class AdminConfig(_Model):
    """The signed admin API (`/api/v1/`) and webhook delivery."""

    poll_seconds: float = Field(2.0, gt=0)  # how soon other instances see paygate changes
    secret_min_length: int = Field(24, ge=16)  # custom origin secrets (PATCH .../secret)
    webhook_interval_seconds: float = Field(1.0, gt=0)  # delivery worker's poll
    webhook_timeout_seconds: float = Field(10.0, gt=0)  # one delivery attempt
    webhook_max_attempts: int = Field(8, ge=1)  # then the delivery is `failed`
    webhook_backoff_seconds: float = Field(2.0, gt=0)  # first retry; doubles, with jitter
    webhook_backoff_max_seconds: float = Field(900.0, gt=0)


class MetricsConfig(_Model):
    """Prometheus `/metrics`: off by default; on its own listener (`host`, `port`) so it
    need not be reachable from the paid side, or on the main one when `port` is unset."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int | None = Field(9402, ge=0, le=65535)


class LoggingConfig(_Model):
    """`text` (human-readable, the default) or `json` (one object per line); the
    TOLLGATE_LOG_FORMAT environment variable overrides it."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Model):
    server: ServerConfig = ServerConfig()
    replay: ReplayConfig = ReplayConfig()
    database: DatabaseConfig = DatabaseConfig()
    assets: dict[str, Asset] = {}
    evm: dict[str, EvmNetworkConfig] = {}
    hedera: HederaConfig | None = None
    paygates: list[PaygateConfig] = []
    facilitator: FacilitatorConfig = FacilitatorConfig()
    wallet: WalletConfig = WalletConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    files: FilesConfig = FilesConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        errors: list[str] = []
        seen: dict[str, int] = {}
        for i, pg in enumerate(self.paygates):
            where = f"paygates[{i}]"
            if pg.id in seen:
                errors.append(f"{where}.id: {pg.id!r} is already used by paygates[{seen[pg.id]}]")
            seen[pg.id] = i
            errors += _check_paygate(self, pg, where)
        errors += _check_overlaps(self.paygates)
        for net in self.evm:
            if not re.fullmatch(r"eip155:[1-9]\d*", net):
                errors.append(f"evm.{net}: must be keyed by a CAIP-2 id such as eip155:8453")
        errors += _check_facilitator(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def paygate(self, paygate_id: str) -> PaygateConfig | None:
        return next((p for p in self.paygates if p.id == paygate_id), None)


def _check_paygate(cfg: Config, pg: PaygateConfig, where: str) -> list[str]:
    errors = []
    for asset_id, price in pg.prices.items():
        asset = cfg.assets.get(asset_id)
        if asset is None:
            known = ", ".join(sorted(cfg.assets)) or "none defined"
            errors.append(f"{where}.prices.{asset_id}: unknown asset (known: {known})")
            continue
        with localcontext(prec=100):  # exact: a long price must not round before the check
            fractional = (price * 10**asset.decimals) % 1
        if fractional:
            errors.append(
                f"{where}.prices.{asset_id}: {price} has more than {asset.decimals} decimals")
    priced = {a: cfg.assets[a] for a in pg.prices if a in cfg.assets}
    for rail in pg.rails:
        if rail == "prepaid-token":
            if not pg.plans:
                errors.append(f"{where}.rails: prepaid-token needs plans")
            continue
        if rail == "x402-evm":
            evm_assets = [a for a in priced.values() if isinstance(a, Eip3009Asset)]
            if not evm_assets:
                errors.append(f"{where}.rails: x402-evm needs a price in an eip3009 asset")
            if "evm" not in pg.pay_to:
                errors.append(f"{where}.pay_to.evm: required by the x402-evm rail")
            for a in evm_assets:
                if a.network not in cfg.evm:
                    errors.append(f"{where}.rails: x402-evm needs an [evm.\"{a.network}\"] section")
        else:
            if not any(isinstance(a, HbarAsset) for a in priced.values()):
                errors.append(f"{where}.rails: {rail} needs a price in an hbar asset")
            if cfg.hedera is None:
                errors.append(f"{where}.rails: {rail} needs a [hedera] section")
            if rail == "x402-hedera" and "hedera" not in pg.pay_to:
                errors.append(f"{where}.pay_to.hedera: required by the x402-hedera rail")
    for j, plan in enumerate(pg.plans):
        for asset_id in plan.prices:
            if asset_id not in pg.prices:
                errors.append(f"{where}.plans[{j}].prices.{asset_id}: the paygate has no "
                              "price in this asset, so no x402 rail sells in it")
            elif asset_id in cfg.assets:
                with localcontext(prec=100):
                    if (plan.prices[asset_id] * 10**cfg.assets[asset_id].decimals) % 1:
                        errors.append(f"{where}.plans[{j}].prices.{asset_id}: too many decimals")
    if any(pg.prices.values()) and not pg.rails:
        errors.append(f"{where}.rails: a priced paygate needs at least one rail")
    charges = pg.default_units > 0 or any(r.units > 0 for r in pg.rules)
    if charges and not pg.rails:
        errors.append(f"{where}: requests cost units but no rail can pay them; add rails and "
                      "prices, or set default_units = 0 (and rule units to 0) for a free paygate")
    host = urlsplit(pg.target).hostname or ""
    allow = pg.allow_private_target if pg.allow_private_target is not None \
        else cfg.server.allow_private_targets
    if not allow and is_private_host(host):
        errors.append(
            f"{where}.target: {host} is a loopback/private/metadata address; set "
            "allow_private_target = true (or server.allow_private_targets) to allow it")
    if "evm" in pg.pay_to and not re.fullmatch(r"0x[0-9a-fA-F]{40}", pg.pay_to["evm"]):
        errors.append(f"{where}.pay_to.evm: must be a 0x-prefixed 20-byte hex address")
    if "hedera" in pg.pay_to and not re.fullmatch(r"\d+\.\d+\.\d+", pg.pay_to["hedera"]):
        errors.append(f"{where}.pay_to.hedera: must be a Hedera account id such as 0.0.1234")
    return errors


def _check_facilitator(cfg: Config) -> list[str]:
    fac, errors = cfg.facilitator, []
    if fac.enabled and not fac.api_key_env:
        errors.append("facilitator.api_key_env: required when the facilitator is enabled")
    for asset_id in fac.assets or ():
        asset = cfg.assets.get(asset_id)
        if asset is None:
            errors.append(f"facilitator.assets: unknown asset {asset_id!r}")
        elif not isinstance(asset, Eip3009Asset):
            errors.append(f"facilitator.assets: {asset_id!r} is not an eip3009 asset")
        elif asset.network not in cfg.evm:
            errors.append(f"facilitator.assets: {asset_id!r} needs an [evm.\"{asset.network}\"] "
                          "section")
    for address in fac.pay_to:
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
            errors.append(f"facilitator.pay_to: {address!r} is not a 0x-prefixed 20-byte "
                          "hex address")
    return errors


def _check_overlaps(paygates: list[PaygateConfig]) -> list[str]:
    """Two paygates overlap when a request path could match both: same host (or either
    without a host) and one prefix equal to, or a path-segment prefix of, the other,
    ignoring letter case."""
    errors = []
    for i, a in enumerate(paygates):
        for j in range(i):
            b = paygates[j]
            if a.host and b.host and a.host.lower() != b.host.lower():
                continue
            # prefixes match without regard to case (gateway.routing.strip_prefix)
            pa, pb = a.prefix.rstrip("/").lower() + "/", b.prefix.rstrip("/").lower() + "/"
            if pa.startswith(pb) or pb.startswith(pa):
                errors.append(
                    f"paygates[{i}].prefix: {a.prefix!r} overlaps paygates[{j}] ({b.prefix!r})")
    return errors


def price_atomic(cfg: Config, pg: PaygateConfig, asset_id: str) -> int:
    """The price of one unit of `pg` in `asset_id`, in integer atomic units."""
    asset = cfg.assets[asset_id]
    with localcontext(prec=100):
        return int(pg.prices[asset_id] * 10**asset.decimals)


def format_atomic(amount: int, decimals: int) -> str:
    """Integer atomic units as a decimal string of whole units (`5000000`, 8 -> `0.05`)."""
    text = format(Decimal(amount).scaleb(-decimals), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part in ("eip3009", "hbar") and loc.startswith("assets."):
                continue  # the discriminator tag pydantic adds to the path
            else:
                loc += f".{part}" if loc else str(part)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        for line in msg.splitlines():
            lines.append(f"{loc}: {line}" if loc else line)
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: invalid config\n" + "\n".join(
            f"  {line}" for line in str(exc).splitlines())) from None
