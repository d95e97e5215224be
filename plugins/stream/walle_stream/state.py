"""Durable engine state in one SQLite database (WAL mode).

The engine's working state lives in memory; this file is its durable copy. Every commit
writes, in ONE transaction, the input offset, the counters, the partial matches and
windows of the keys changed since the previous commit, and the firings recorded since
then. A process killed at any point therefore restarts from a consistent snapshot: the
events after the saved offset are read again and nothing is counted twice.

``synchronous=NORMAL`` with WAL survives a killed process (the case tested here); a
power cut may lose the last commits but never corrupts the database.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS match_state (field TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,
                                        PRIMARY KEY (field, key));
CREATE TABLE IF NOT EXISTS window_state (sid TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,
                                         PRIMARY KEY (sid, key));
CREATE TABLE IF NOT EXISTS fires (id INTEGER PRIMARY KEY AUTOINCREMENT, input_offset INTEGER NOT NULL,
                                  task TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL,
                                  features TEXT NOT NULL);
"""



class RawJSON(str):
    """Row data already encoded as compact JSON (e.g. by the native matcher): written as is."""


#: a row change: (first key part, second key part, JSON-able data, RawJSON or None to delete)
Change = tuple[str, str, Any]


class StateStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def meta(self) -> dict[str, Any]:
        return {name: json.loads(value) for name, value in self.db.execute("SELECT name, value FROM meta")}

    def match_rows(self) -> Iterator[tuple[str, str, Any]]:
        for field, key, data in self.db.execute("SELECT field, key, data FROM match_state"):
            yield field, key, json.loads(data)

    def window_rows(self) -> Iterator[tuple[str, str, Any]]:
        for sid, key, data in self.db.execute("SELECT sid, key, data FROM window_state"):
            yield sid, key, json.loads(data)

    def fires(self) -> list[tuple[int, str, str, int, Any]]:
        rows = self.db.execute("SELECT input_offset, task, key, ts, features FROM fires ORDER BY id")
        return [(offset, task, key, ts, json.loads(features)) for offset, task, key, ts, features in rows]

    def commit(self, meta: dict[str, Any], matches: Iterable[Change], windows: Iterable[Change],
               fires: Iterable[tuple[int, str, str, int, Any]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                           [(name, json.dumps(value)) for name, value in meta.items()])
            _apply(db, "match_state", "field", matches)
            _apply(db, "window_state", "sid", windows)
            db.executemany("INSERT INTO fires (input_offset, task, key, ts, features) VALUES (?, ?, ?, ?, ?)",
                           [(o, t, k, ts, json.dumps(f)) for o, t, k, ts, f in fires])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def size_bytes(self) -> int:
        page_count = self.db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count * page_size)


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"))``, without its per-call set-up: a commit
    encodes every changed key's rows, and for small rows the set-up (a new encoder object
    and its C scanner per call) costs as much as the encoding. The C encoder when the
    interpreter has it (no circular-reference check: the rows are plain trees)."""
    encoder = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    scan = make(None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(obj: Any) -> str:
        return "".join(scan(obj, 0))

    return encode


_encode_compact = _compact_encoder()


def _apply(db: sqlite3.Connection, table: str, first: str, changes: Iterable[Change]) -> None:
    upserts, deletes = [], []
    for a, b, data in changes:
        if data is None:
            deletes.append((a, b))
        else:
            upserts.append((a, b, str(data) if type(data) is RawJSON else _encode_compact(data)))
    if deletes:
        db.executemany(f"DELETE FROM {table} WHERE {first} = ? AND key = ?", deletes)
    if upserts:
        db.executemany(f"INSERT OR REPLACE INTO {table} ({first}, key, data) VALUES (?, ?, ?)", upserts)
