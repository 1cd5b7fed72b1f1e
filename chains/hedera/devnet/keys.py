"""Key generation and signature verification for the devnet, as a consensus node does it.

Written against ``cryptography`` and ``pycryptodome`` directly rather than the SDK's key
classes, so the devnet is an independent check on what the SDK signs:

* ED25519: the signature is over the raw ``bodyBytes``; public key = 32 raw bytes.
* ECDSA secp256k1: 64-byte ``r || s`` over ``keccak256(bodyBytes)``; public key = 33-byte
  compressed SEC1 point (what the SDK puts in ``pubKeyPrefix`` and the mirror shows).
"""

from __future__ import annotations

from dataclasses import dataclass

from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

ED25519 = "ED25519"
ECDSA_SECP256K1 = "ECDSA_SECP256K1"
KEY_TYPES = (ED25519, ECDSA_SECP256K1)


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


@dataclass(frozen=True)
class KeyPair:
    """A freshly generated key. ``private_der_hex`` loads with ``PrivateKey.from_string``
    (and ``from_string_der``) for both key types; a raw 32-byte hex would be read as
    ED25519 by ``from_string``, so the raw form is only offered alongside."""

    key_type: str
    private_der_hex: str
    private_raw_hex: str
    public_raw: bytes

    @property
    def public_hex(self) -> str:
        return self.public_raw.hex()


def generate(key_type: str) -> KeyPair:
    """Generate a new key pair of ``key_type`` (``ED25519`` or ``ECDSA_SECP256K1``)."""
    if key_type == ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
    elif key_type == ECDSA_SECP256K1:
        private = ec.generate_private_key(ec.SECP256K1())
        raw = private.private_numbers().private_value.to_bytes(32, "big")
        public = private.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.CompressedPoint)
    else:
        raise ValueError(f"unsupported key type {key_type!r}; expected one of {KEY_TYPES}")
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return KeyPair(key_type, der.hex(), raw.hex(), public)


def sign(pair: KeyPair, message: bytes) -> bytes:
    """Sign like the SDK does (used by tests that hand-build transactions)."""
    der = serialization.load_der_private_key(bytes.fromhex(pair.private_der_hex), password=None)
    if pair.key_type == ED25519:
        return der.sign(message)
    r, s = decode_dss_signature(der.sign(keccak256(message), ec.ECDSA(Prehashed(hashes.SHA256()))))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(key_type: str, public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` by ``public_raw`` over ``message`` is valid. Never raises."""
    try:
        if key_type == ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
            return True
        if key_type == ECDSA_SECP256K1:
            if len(signature) != 64:
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public_raw)
            public.verify(encode_dss_signature(r, s), keccak256(message),
                          ec.ECDSA(Prehashed(hashes.SHA256())))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def public_key_from_proto_bytes(key_type: str, data: bytes) -> bytes:
    """Validate/normalize a public key taken from a protobuf ``Key``; raises ``ValueError``.

    ECDSA keys are stored compressed whatever form they arrive in, so that signature-map
    prefixes (always compressed from the SDK) match.
    """
    if key_type == ED25519:
        if len(data) != 32:
            raise ValueError("ED25519 public key must be 32 bytes")
        return data
    if key_type == ECDSA_SECP256K1:
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        return point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    raise ValueError(f"unsupported key type {key_type!r}")
