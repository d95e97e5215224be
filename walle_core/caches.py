"""Where walle keeps what it can recompute (search decisions, machine profiles, compiled
models), and the small JSON stores some of them use."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_root() -> Path:
    """``$WALLE_CACHE_DIR``, else ``~/.cache/walle``."""
    return Path(os.environ.get("WALLE_CACHE_DIR", Path.home() / ".cache" / "walle"))


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(file)`` into a file beside it, then rename that over it:
    a reader sees the old file or the new one, never half. Each writing thread of each
    process has its own temporary name."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(aside, "wb") as f:
            write(f)
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


class JsonFileCache:
    """A small JSON object on disk under ``$WALLE_CACHE_DIR`` (default ``~/.cache/walle``),
    rewritten atomically so a concurrent reader sees the old or the new file, never half.
    Without a home directory (and no ``$WALLE_CACHE_DIR``) it stays empty."""

    def __init__(self, filename: str, path: Path | None = None) -> None:
        self.path: Path | None = path
        if path is None:
            try:
                self.path = cache_root() / filename
            except RuntimeError:  # no home directory: nowhere to keep it
                pass
        self._lock = threading.Lock()

    def _read(self) -> dict:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}  # a damaged file is an empty cache

    def _write(self, data: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.path, lambda f: f.write(json.dumps(data, indent=1).encode()))

    def get_entry(self, key: str) -> object:
        """The value stored under ``key``, or None."""
        with self._lock:
            return self._read().get(key)

    def put_entry(self, key: str, value: object) -> None:
        """Store ``value`` (JSON-able) under ``key``, keeping every other entry."""
        with self._lock:
            data = self._read()
            data[key] = value
            self._write(data)
