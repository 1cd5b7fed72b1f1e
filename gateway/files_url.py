"""Signed download URLs for local paid files, and `Range` parsing. Pure functions.

A URL is `/files/<paygate>/<name>?exp=<unix s>&sig=<hex>` where
sig = HMAC-SHA256(key, "<raw path>?exp=<exp>"): any changed byte of the path, the expiry or
the signature fails the check (403), and so does any other query parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,159}")
_QUERY = re.compile(r"exp=([0-9]{1,12})&sig=([0-9a-f]{64})")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


class LinkRefused(Exception):
    """A download URL that is forged, altered or expired (403 with this message)."""


class RangeNotSatisfiable(Exception):
    """A `Range` outside the file (416)."""


def valid_name(name: str) -> bool:
    """File names are one plain segment: no `/`, no `..`, no leading dot, nothing to
    decode, so a name can never reach outside its paygate's files."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


def _mac(key: bytes, raw_path: str, exp: int) -> str:
    return hmac.new(key, f"{raw_path}?exp={exp}".encode(), hashlib.sha256).hexdigest()


def signed_path(key: bytes, paygate_id: str, name: str, exp: int) -> str:
    raw_path = f"/files/{paygate_id}/{name}"
    return f"{raw_path}?exp={exp}&sig={_mac(key, raw_path, exp)}"


def check(key: bytes, raw_path: str, raw_query: str, now: float) -> None:
    """Raise LinkRefused unless the URL is one this key signed and has not expired. The
    signature is checked first: an expiry an attacker changed is never believed."""
    m = _QUERY.fullmatch(raw_query)
    if m is None:
        raise LinkRefused("this download link is malformed or altered")
    exp = int(m.group(1))
    if not hmac.compare_digest(_mac(key, raw_path, exp), m.group(2)):
        raise LinkRefused("this download link's signature does not match (altered link)")
    if exp < now:
        raise LinkRefused(f"this download link expired at unix time {exp}; pay again for a "
                          "new one")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single `bytes=` range on a file of `size` bytes; None
    to send the whole file (no header, or a form this server does not serve partially,
    such as several ranges). RangeNotSatisfiable for a range outside the file, an empty
    suffix (`bytes=-0`) or a reversed one (`bytes=5-2`)."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        raise RangeNotSatisfiable("empty range")
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if end < start:
        raise RangeNotSatisfiable("range ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable("range starts past the end of the file")
    return start, min(end, size - 1)
