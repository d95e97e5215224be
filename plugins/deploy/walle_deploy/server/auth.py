"""Tokens. Only SHA-256 hashes of device tokens are stored, and every comparison is
constant-time, so neither a database leak nor response timing reveals a usable token."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import HTTPConnection


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def split_device_token(token: str) -> tuple[str, str] | None:
    """Device tokens read ``<device id>:<secret>``, so the server finds the device without a scan."""
    device_id, sep, secret = token.partition(":")
    return (device_id, secret) if sep and device_id and secret else None
