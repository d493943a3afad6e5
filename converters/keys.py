"""Ed25519 keys for signing bundles (workstation side; devices only verify).

Why Ed25519: small keys and signatures, no parameters to get wrong, and verification in
``cryptography`` which the device already depends on. The private key is written with
mode 0600 and never enters a bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converters.errors import ConvertError

PRIVATE_NAME = "private.pem"
PUBLIC_NAME = "public.pem"


def generate_keypair(out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``private.pem`` (0600) and ``public.pem`` into ``out_dir``; refuses to overwrite a key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise ConvertError(f"{out_dir} already holds a key pair; choose another --out (overwriting would make "
                           "every bundle signed with the old key unverifiable)")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(pub)
    return priv_path, pub_path


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"signing key {path} not found; create one with 'crackseg-convert keygen --out DIR'")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (ValueError, TypeError) as exc:
        raise ConvertError(f"{path}: not an unencrypted PEM private key ({exc}); use the private.pem written by "
                           "'crackseg-convert keygen'") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConvertError(f"{path}: is a {type(key).__name__}, not an Ed25519 private key")
    return key


def signer_for(path: str | Path) -> Callable[[bytes], bytes]:
    """A function that signs bytes with the private key at ``path``."""
    key = load_private_key(path)
    return key.sign
