"""Where walle keeps what it can recompute (search decisions, machine profiles, compiled
models), and the small JSON stores some of them use."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def cache_root() -> Path:
    """``$WALLE_CACHE_DIR``, else ``~/.cache/walle``."""
    return Path(os.environ.get("WALLE_CACHE_DIR", Path.home() / ".cache" / "walle"))


class JsonFileCache:
    """A small JSON object on disk under ``$WALLE_CACHE_DIR`` (default ``~/.cache/walle``),
    rewritten atomically so a concurrent reader sees the old or the new file, never half."""

    def __init__(self, filename: str, path: Path | None = None) -> None:
        self.path = path or cache_root() / filename
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}  # a damaged file is an empty cache

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)

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
