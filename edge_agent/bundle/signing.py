"""Ed25519 verification of a bundle manifest (device side: needs only ``cryptography``).

The signature covers the exact bytes of ``manifest.json``; the manifest lists size and
sha256 of every file, so one signature proves the whole bundle. ``manifest.sig`` holds the
64-byte signature in base64 (one line) so it survives text-mode transports.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import UserError


class SignatureError(UserError, ValueError):
    """A public key that cannot be used, or a signature that does not verify."""


PublicKeyLike = Ed25519PublicKey | bytes | str | Path


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes/text, 32 raw bytes, or a PEM file path."""
    if isinstance(key, Ed25519PublicKey):
        return key
    source = "the given key"
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        data = key.encode()
    elif isinstance(key, (str, Path)):
        path = Path(key)
        source = str(path)
        if not path.is_file():
            raise SignatureError(f"public key file {path} not found: pass the public.pem written by "
                                 "'crackseg-convert keygen'")
        data = path.read_bytes()
    else:
        data = bytes(key)
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"{source}: not a PEM public key; use the public.pem written by "
                             "'crackseg-convert keygen' (never the private key)") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise SignatureError(f"{source}: is a {type(loaded).__name__}, not an Ed25519 public key")
    return loaded


def encode_signature(signature: bytes) -> bytes:
    return base64.b64encode(signature) + b"\n"


def decode_signature(text: bytes) -> bytes:
    try:
        sig = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("manifest.sig is not base64 text") from exc
    if len(sig) != 64:
        raise SignatureError(f"manifest.sig holds {len(sig)} bytes, an Ed25519 signature has 64")
    return sig


def verify_manifest(manifest_bytes: bytes, signature_file_bytes: bytes, public_key: PublicKeyLike) -> None:
    """Raise SignatureError unless the signature matches the manifest bytes and the key."""
    key = load_public_key(public_key)
    try:
        key.verify(decode_signature(signature_file_bytes), manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError("signature does not match: the manifest was changed after signing, or it was "
                             "signed with another key") from exc
