"""Which paygate a request belongs to, and how many units it costs. Pure functions.

A paygate matches by path prefix (at a segment boundary, without regard to letter case)
and, if it names one, by host. The longest matching prefix wins; config validation
already refuses overlapping prefixes (case-insensitively), so at most one paygate can
match a given request. Within a paygate, resource rules are tried in order and the first
match sets the units; unmatched paths take the paygate's default.

The path rule (the path that is priced is the path that is forwarded): the gateway
forwards the caller's path exactly as spelt, so it only accepts spellings that origin
frameworks cannot read as a different route (`path_problem`). What remains ambiguous
between frameworks, letter case and one trailing slash, is priced at the dearest
reading (`Route.units_for`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from gateway.config import PaygateConfig


@dataclass(frozen=True)
class CompiledRule:
    method: str
    pattern: re.Pattern[str]
    units: int
    folded: re.Pattern[str] | None = None  # the same glob, ignoring letter case

    def matches(self, method: str, path: str, ignore_case: bool = False) -> bool:
        pattern = (self.folded or self.pattern) if ignore_case else self.pattern
        return (self.method == "*" or self.method == method) and bool(pattern.fullmatch(path))


@lru_cache(maxsize=1024)
def glob_to_regex(glob: str, ignore_case: bool = False) -> re.Pattern[str]:
    """`*` matches any run of characters (slashes included); everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")),
                      re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True)
class Route:
    paygate: PaygateConfig
    rules: tuple[CompiledRule, ...]

    def units_for(self, method: str, subpath: str) -> int:
        """The dearest of the readings an origin may give `subpath`: as spelt or with its
        letter case ignored, with or without one trailing slash. An origin that routes
        case-insensitively or strips a trailing slash then never serves a dearer route
        than the one priced, and a case-sensitive origin is priced by its exact rule."""
        spellings = [subpath]
        if len(subpath) > 1 and subpath.endswith("/"):
            spellings.append(subpath[:-1])
        return max(self._first_match(method, s, fold) for s in spellings for fold in (False, True))

    def _first_match(self, method: str, subpath: str, ignore_case: bool) -> int:
        for rule in self.rules:
            if rule.matches(method, subpath, ignore_case):
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


_REMEMBER = 4096


class Router:
    def __init__(self, paygates: list[PaygateConfig]) -> None:
        routes = [Route(pg, tuple(CompiledRule(r.method, glob_to_regex(r.path), r.units,
                                               glob_to_regex(r.path, True))
                                  for r in pg.rules)) for pg in paygates]
        # Longest prefix first; host-bound before host-less for equal prefixes.
        self._routes = sorted(routes, key=lambda r: (-len(r.paygate.prefix), r.paygate.host is None))
        self._remembered: dict[tuple[str, str | None, str], Match | None] = {}

    def match_cached(self, method: str, host: str | None, path: str) -> Match | None:
        """`match`, remembered for short (method, host, path) triples: a Router and its
        config are immutable (a new config builds a new Router), so an answer never goes
        stale, and at most _REMEMBER answers are kept whatever callers send."""
        if len(path) + len(host or "") > 256:
            return self.match(method, host, path)
        key = (method, host, path)
        try:
            return self._remembered[key]
        except KeyError:
            pass
        found = self.match(method, host, path)
        if len(self._remembered) >= _REMEMBER:
            self._remembered.clear()
        self._remembered[key] = found
        return found

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
    """The rest of `path` below `prefix` (starting with "/"), or None when the prefix
    does not match at a segment boundary. Letter case is ignored: an origin that routes
    case-insensitively must not be reachable through another paygate (or none) by
    spelling the prefix differently."""
    if prefix == "/":
        return path
    head, rest = path[:len(prefix)], path[len(prefix):]
    if head.lower() != prefix.lower():
        return None
    if rest == "":
        return "/"
    if rest.startswith("/"):
        return rest
    return None


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar and "/", without ";" (path parameters, which many origins drop) and with
# "%" for percent-encoding. Everything else (space, backslash, quotes, non-ASCII) is refused.
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,=:@/%")
# Percent-encoded, these read as a different route on some origin: unreserved characters
# (including "." for dot segments) are decoded by most frameworks, "/" and "\\" split
# segments on some, ";" starts path parameters, "%" is decoded twice by some, controls
# truncate or confuse.
_REFUSED_ENCODED = (frozenset(map(ord, _UNRESERVED)) | frozenset(b"/\\;%")
                    | frozenset(range(0x20)) | {0x7F})
_HEX = frozenset(string.hexdigits)


def path_problem(raw_path: str) -> str | None:
    """None when `raw_path` (the percent-encoded path of the request target, without its
    query) is spelt the one way every common origin framework reads alike; otherwise
    what is wrong with it. Refused: empty segments (`//`, except one trailing slash), `.`
    and `..` segments, `;`, backslashes and other characters outside RFC 3986 pchar,
    `%` not followed by two hex digits, percent-encoded unreserved characters (`%62`),
    `/`, `\\`, `;`, `%` or controls, percent-encoded bytes that are not UTF-8 (overlong
    forms included), and characters that Unicode compatibility normalisation changes
    (fullwidth letters or slashes)."""
    if not raw_path.startswith("/"):
        return "path must start with /"
    for ch in raw_path:
        if ch not in _PATH_CHARS:
            return f"path must not contain {ch!r}"
    decoded = bytearray()
    i = 0
    while i < len(raw_path):
        ch = raw_path[i]
        if ch != "%":
            decoded += ch.encode("ascii")
            i += 1
            continue
        pair = raw_path[i + 1:i + 3]
        if len(pair) != 2 or not set(pair) <= _HEX:
            return "path has a % that is not followed by two hex digits"
        byte = int(pair, 16)
        if byte in _REFUSED_ENCODED:
            return f"path must not percent-encode {chr(byte)!r}"
        decoded.append(byte)
        i += 3
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "path is not UTF-8 once percent-decoded"
    if unicodedata.normalize("NFKC", text) != text:
        return "path has characters that Unicode normalisation changes"
    segments = raw_path.split("/")[1:]
    if any(seg == "" for seg in segments[:-1]):
        return "path must not contain empty segments (//)"
    if any(seg in (".", "..") for seg in segments):
        return "path must not contain . or .. segments"
    return None
