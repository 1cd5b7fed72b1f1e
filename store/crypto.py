"""Secrets at rest: encrypted with a master key before they touch the store.

The master key comes from an environment variable (production) or, for the embedded
default, from a key file created on first use with 0600 permissions. Losing the key
makes stored secrets unreadable, which is the point: the database alone reveals none.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class MasterKeyError(Exception):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
            self._key = bytes(key) if isinstance(key, (bytes, bytearray)) else str(key).encode()
        except (ValueError, TypeError):
            raise MasterKeyError(
                "master key must be 32 url-safe base64-encoded bytes "
                "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            ) from None

    def derive(self, label: str) -> bytes:
        """A key for `label`, derived from the master key (the same on every instance that
        shares it), so no second secret needs distributing."""
        return hmac.new(self._key, label.encode(), hashlib.sha256).digest()

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise MasterKeyError("a stored secret does not decrypt with this master key") from None


def load_master_key(env_name: str, key_file: str | Path) -> SecretBox:
    """The env var wins; else the key file, created (0600) when absent.

    Safe when several processes start at once without a key file: exactly one key is
    created and every process ends up with it (see `_create_key_file`)."""
    value = os.environ.get(env_name)
    if value:
        return SecretBox(value.strip().encode("ascii"))
    path = Path(key_file)
    if not path.exists():
        _create_key_file(path)
    return SecretBox(path.read_bytes().strip())


def _create_key_file(path: Path) -> None:
    """Write a fresh key to a private temporary file in the same directory, then link it
    into place. `link` fails if the name exists, so the first process to link wins and
    the others read the winner's key; the name never points at a partly written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # mkstemp already uses 0600; say so, not rely on it
            fh.write(Fernet.generate_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        os.unlink(tmp)
