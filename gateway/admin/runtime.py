"""Paygates at run time: validation with the config file's code, and the reload that
makes every instance route the same paygates.

The paygates an instance routes are its config file's plus the admin API's (rows of
`runtime_paygates` with source "api"). Each instance polls `paygate_state.version` every
`admin.poll_seconds` (2 s by default) and, when it moved, rebuilds its `Config` and
`Router` from the store, without a restart. The instance that made a change reloads at
once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from gateway.config import Config, PaygateConfig, format_validation_error
from gateway.routing import Router
from gateway.state import Gateway
from store.api_keys import KeyStore
from store.crypto import SecretBox
from store.paygates import PaygateStore

log = logging.getLogger("tollgate.admin")


class InvalidPaygate(Exception):
    """One line per problem, each naming the field (`target: ...`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class AdminState:
    file_config: Config
    keys: KeyStore
    paygates: PaygateStore
    box: SecretBox
    version: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _with_paygates(base: Config, paygates: list[Any]) -> Config:
    """`base` with its paygates replaced; runs every config check (the model validator)."""
    data = {name: getattr(base, name) for name in Config.model_fields if name != "paygates"}
    data["paygates"] = paygates
    return Config.model_validate(data)


def validate_paygate(gw: Gateway, body: Any, others: list[PaygateConfig]) -> PaygateConfig:
    """`body` checked exactly as a `[[paygates]]` table of the config file would be,
    together with `others` (overlaps, duplicate ids); InvalidPaygate names each field.
    A rail that is not running on this gateway is refused too: rails start with the
    gateway (a config paygate must use it)."""
    if not isinstance(body, dict):
        raise InvalidPaygate(["body must be a JSON object"])
    n = len(others)
    try:
        cfg = _with_paygates(gw.config, [*others, body])
    except ValidationError as exc:
        lines = []
        for line in format_validation_error(exc).splitlines():
            line = line.removeprefix("paygates: ")
            if line.startswith(f"paygates[{n}]"):
                lines.append(line[len(f"paygates[{n}]"):].lstrip(".:").lstrip() or line)
            elif line.startswith("paygates[") and f"overlaps paygates[{n}]" in line:
                lines.append(_name_others(line, others))
            elif not line.startswith("paygates["):
                lines.append(line)
        raise InvalidPaygate([_name_others(x, others) for x in lines] or
                             ["invalid paygate"]) from None
    pg = cfg.paygates[n]
    missing = [r for r in pg.rails if r not in gw.rails]
    if missing:
        raise InvalidPaygate([f"rails: {r} is not running on this gateway (rails start with "
                              "the gateway, for the paygates of its config file)"
                              for r in missing])
    return pg


def _name_others(line: str, others: list[PaygateConfig]) -> str:
    return re.sub(r"paygates\[(\d+)\]",
                  lambda m: (f"paygate {others[int(m.group(1))].id!r}"
                             if int(m.group(1)) < len(others) else m.group(0)), line)


def private_ok(config: Config) -> set[str]:
    out = set()
    for pg in config.paygates:
        allow = pg.allow_private_target if pg.allow_private_target is not None \
            else config.server.allow_private_targets
        if allow:
            out.add((urlsplit(pg.target).hostname or "").lower())
    return out


async def reload(gw: Gateway, admin: AdminState, *, force: bool = False) -> bool:
    """Rebuild `gw.config` and `gw.router` from the file and the store when the store's
    version moved (or `force`); True if rebuilt. A stored paygate that no longer
    validates here (another instance's config differs) is skipped with a warning."""
    async with admin.lock:
        version = await admin.paygates.version()
        if version == admin.version and not force:
            return False
        rows = [r for r in await admin.paygates.all() if r.source == "api"]
        file_ids = {pg.id for pg in admin.file_config.paygates}
        accepted: list[PaygateConfig] = list(admin.file_config.paygates)
        for row in rows:
            if row.id in file_ids:
                continue
            try:
                accepted = _with_paygates(admin.file_config, [*accepted, row.body]).paygates
            except ValidationError as exc:
                log.warning("paygate %s from the store is not valid here, skipped: %s",
                            row.id, format_validation_error(exc).replace("\n", "; "))
        new = _with_paygates(admin.file_config, accepted)
        old = {pg.id: pg for pg in gw.config.paygates}
        gw.config = new
        gw.router = Router(new.paygates)
        if gw.resolver is not None:  # runtime paygates change who may be private
            gw.resolver.allow_private(private_ok(new))
        for pg in new.paygates:
            if old.get(pg.id) != pg:
                gw.forget_secret(pg.id)
        admin.version = version
        return True


async def poll(gw: Gateway, admin: AdminState) -> None:
    """Background task: reload whenever the version moves."""
    while True:
        await asyncio.sleep(gw.config.admin.poll_seconds)
        try:
            await reload(gw, admin)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store may be briefly down: try again next round
            log.exception("paygate reload failed")
