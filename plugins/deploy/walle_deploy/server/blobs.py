"""Content-addressed bundle storage on the local disk: ``<root>/<first 2 hex>/<digest>.tar``.

A digest names exactly one byte string, so a stored bundle is never rewritten, any HTTP
cache or CDN can keep it forever, and its ETag is the digest itself. A production setup
swaps this for an S3-compatible bucket behind a CDN with the same naming.
"""

from __future__ import annotations

import os
from pathlib import Path

from walle_deploy.bundle import DIGEST_RE, sha256_file


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"[deploy] not a SHA-256 hex digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}.tar"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def adopt(self, tmp_file: Path) -> str:
        """Move a fully written file from ``incoming/`` to its content address."""
        digest = sha256_file(tmp_file)
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp_file, final)
        return digest
