"""Build the rails the config asks for. Each rail's module is imported only when a
paygate uses it, so a gateway without Hedera never imports the Hedera SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import ConfigError
from gateway.rails.base import Rail

if TYPE_CHECKING:
    from gateway.state import Gateway


async def build_rails(gw: "Gateway") -> dict[str, Rail]:
    wanted = {name for pg in gw.config.paygates for name in pg.rails}
    rails: dict[str, Rail] = {}
    for name in sorted(wanted):
        factory = _FACTORIES.get(name)
        if factory is None:
            raise ConfigError(f"rail {name!r} is not available in this build")
        rails[name] = await factory(gw)
    return rails


_FACTORIES: dict = {}
