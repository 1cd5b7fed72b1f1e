"""Which paygate a request belongs to, and how many units it costs. Pure functions.

A paygate matches by path prefix (at a segment boundary) and, if it names one, by host.
The longest matching prefix wins; config validation already refuses overlapping
prefixes, so at most one paygate can match a given request. Within a paygate, resource
rules are tried in order and the first match sets the units; unmatched paths take the
paygate's default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from gateway.config import PaygateConfig


@dataclass(frozen=True)
class CompiledRule:
    method: str
    pattern: re.Pattern[str]
    units: int

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method) and bool(self.pattern.fullmatch(path))


@lru_cache(maxsize=1024)
def glob_to_regex(glob: str) -> re.Pattern[str]:
    """`*` matches any run of characters (slashes included); everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")))


@dataclass(frozen=True)
class Route:
    paygate: PaygateConfig
    rules: tuple[CompiledRule, ...]

    def units_for(self, method: str, subpath: str) -> int:
        for rule in self.rules:
            if rule.matches(method, subpath):
                return rule.units
        return self.paygate.default_units


@dataclass(frozen=True)
class Match:
    route: Route
    subpath: str  # the request path below the prefix, always starting with "/"
    units: int

    @property
    def paygate(self) -> PaygateConfig:
        return self.route.paygate


class Router:
    def __init__(self, paygates: list[PaygateConfig]) -> None:
        routes = [Route(pg, tuple(CompiledRule(r.method, glob_to_regex(r.path), r.units)
                                  for r in pg.rules)) for pg in paygates]
        # Longest prefix first; host-bound before host-less for equal prefixes.
        self._routes = sorted(routes, key=lambda r: (-len(r.paygate.prefix), r.paygate.host is None))

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def match(self, method: str, host: str | None, path: str) -> Match | None:
        hostname = _hostname(host)
        for route in self._routes:
            pg = route.paygate
            if pg.host and pg.host.lower().strip("[]") != hostname:
                continue
            sub = strip_prefix(pg.prefix, path)
            if sub is None:
                continue
            return Match(route, sub, route.units_for(method, sub))
        return None


def _hostname(host: str | None) -> str:
    """The Host header without its port, lower-cased; IPv6 literals without brackets."""
    host = (host or "").lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.rsplit(":", 1)[0]


def strip_prefix(prefix: str, path: str) -> str | None:
    if prefix == "/":
        return path
    if path == prefix:
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix):]
    return None


def has_dot_segments(path: str) -> bool:
    """`.` or `..` segments would let a path be priced as one resource and served as
    another once the origin normalises it: refuse them."""
    return any(seg in (".", "..") for seg in path.split("/"))
