"""Ed25519 keys for signing bundle manifests.

The publisher keeps the private key; servers and devices hold only public keys. A key is
named by its *key id* (first 16 hex digits of the SHA-256 of the raw public key), which the
signed manifest carries so a device with several trusted keys (during a key rotation) knows
which one to check against.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from walle_deploy.errors import BundleError, DeployError


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(directory: str | Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub`` (PEM) into ``directory``.

    Refuses to overwrite an existing private key: losing it would orphan every device that
    trusts only the old public key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists():
        raise DeployError(f"[deploy] refusing to overwrite existing signing key {private_path}")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DeployError(f"[deploy] cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DeployError(f"[deploy] signing key {path} is not an Ed25519 private key")
    return key


def load_public_key(data: bytes, source: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise DeployError(f"[deploy] cannot read {source}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise DeployError(f"[deploy] {source} is not an Ed25519 public key")
    return key


class TrustedKeys:
    """The public keys a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> TrustedKeys:
        keys = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise DeployError(f"[deploy] cannot read trusted key {path}: {exc}") from exc
            keys.append(load_public_key(data, f"trusted key {path}"))
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def public_keys(self) -> list[Ed25519PublicKey]:
        return [self._keys[k] for k in sorted(self._keys)]

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, kid: str, signature: bytes, message: bytes) -> None:
        """Raise :class:`BundleError` unless ``signature`` is a valid signature of ``message``
        by the trusted key ``kid``."""
        key = self._keys.get(kid)
        if key is None:
            raise BundleError(f"[deploy] bundle signed by untrusted key id {kid!r}")
        try:
            key.verify(signature, message)
        except InvalidSignature as exc:
            raise BundleError("[deploy] bundle manifest signature is invalid") from exc
