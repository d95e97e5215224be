"""A task's key-value store: one SQLite file per task, so state survives restarts.

SQLite gives atomic writes and file locking for free, which is also what makes the same
store usable from process-mode workers. Values are JSON so a store stays readable with
any SQLite tool and never unpickles data written by an untrusted task.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from walle_core.container.errors import TaskError

_MISSING = object()


class KVStore:
    """``ctx.kv``: a persistent mapping from str to JSON-serialisable values."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # autocommit (isolation_level=None): every write is durable when the call returns
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (_key(key),)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TaskError(str(self.path), key, f"kv values must be JSON-serialisable: {exc}") from None
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (_key(key), text))

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (_key(key),))

    def keys(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT key FROM kv ORDER BY key")]

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"[container] kv keys are strings, got {type(key).__name__}")
    return key
