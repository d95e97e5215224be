"""Where walle keeps what it can recompute: search decisions, machine profiles, compiled models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$WALLE_CACHE_DIR``, else ``~/.cache/walle``."""
    return Path(os.environ.get("WALLE_CACHE_DIR", Path.home() / ".cache" / "walle"))
