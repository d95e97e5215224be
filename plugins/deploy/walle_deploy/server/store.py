"""Release metadata in SQLite, mirrored in memory.

Every record is loaded at start and served from memory; bundles, releases and devices are
written through at once (they change rarely), while delivery reports and task results — the
high-rate writes, one per device and state change or results interval — are buffered and written in one
transaction by :meth:`Store.flush` (the server calls it a few times a second). This is the
same write-behind batching the scaling notes in the README rely on. WAL mode with
``synchronous=NORMAL`` keeps a commit to an append without an fsync.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from walle_deploy.errors import DeployError
from walle_deploy.policy import Stage
from walle_deploy.server.results import ResultRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
  digest TEXT PRIMARY KEY, task TEXT NOT NULL, version TEXT NOT NULL, size INTEGER NOT NULL,
  manifest TEXT NOT NULL, created REAL NOT NULL, UNIQUE (task, version));
CREATE TABLE IF NOT EXISTS releases (
  id INTEGER PRIMARY KEY, task TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, attrs TEXT NOT NULL, enrolled REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
  release_id INTEGER NOT NULL, device TEXT NOT NULL, stage INTEGER NOT NULL, state TEXT NOT NULL,
  reason TEXT NOT NULL, notified REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (release_id, device));
CREATE TABLE IF NOT EXISTS results (
  device TEXT NOT NULL, task TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,
  inferences INTEGER NOT NULL, errors INTEGER NOT NULL, p50_ms REAL, p99_ms REAL, backend TEXT NOT NULL,
  updated REAL NOT NULL, PRIMARY KEY (device, task, version));
"""

#: delivery states in the order a healthy delivery goes through them
STATES = ("notified", "downloaded", "installed", "running", "failed")
#: release states; only "active" releases advance and notify new devices
RELEASE_STATES = ("active", "completed", "aborted", "rolled_back")


@dataclass
class BundleRecord:
    digest: str
    task: str
    version: str
    size: int
    manifest: dict[str, Any]
    created: float


@dataclass
class Release:
    id: int
    task: str
    version: str
    digest: str
    size: int
    target: str
    stages: tuple[Stage, ...]
    salt: str
    abort_rate: float
    min_reports: int
    rate: float
    jitter_s: float
    advance_at: float
    auto_advance: bool
    stage_index: int = 0
    state: str = "active"
    reason: str = ""
    created: float = field(default_factory=time.time)
    stage_started: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        data = dict(data)
        data["stages"] = tuple(Stage(**s) for s in data["stages"])
        return cls(**data)


@dataclass
class Device:
    id: str
    token_hash: str
    attrs: dict[str, str]
    enrolled: float
    last_seen: float = 0.0


@dataclass
class Delivery:
    release_id: int
    device: str
    stage: int
    state: str
    reason: str
    notified: float
    updated: float


def astuple_shallow(record: Any) -> tuple[Any, ...]:
    """A dataclass's field values in declaration order (the table's column order)."""
    return tuple(getattr(record, f.name) for f in fields(record))


class Store:
    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.bundles: dict[str, BundleRecord] = {}
        self.releases: dict[int, Release] = {}
        self.devices: dict[str, Device] = {}
        self.deliveries: dict[tuple[int, str], Delivery] = {}
        self._dirty: set[tuple[int, str]] = set()
        self.results: dict[tuple[str, str, str], ResultRecord] = {}
        self._dirty_results: set[tuple[str, str, str]] = set()
        self._load()

    def _load(self) -> None:
        for digest, task, version, size, manifest, created in self.db.execute("SELECT * FROM bundles"):
            self.bundles[digest] = BundleRecord(digest, task, version, size, json.loads(manifest), created)
        for _, _, body in self.db.execute("SELECT * FROM releases"):
            release = Release.from_json(json.loads(body))
            self.releases[release.id] = release
        for dev_id, token_hash, attrs, enrolled in self.db.execute("SELECT * FROM devices"):
            self.devices[dev_id] = Device(dev_id, token_hash, json.loads(attrs), enrolled)
        for row in self.db.execute("SELECT * FROM deliveries"):
            d = Delivery(*row)
            self.deliveries[(d.release_id, d.device)] = d
        for row in self.db.execute("SELECT * FROM results"):
            r = ResultRecord(*row)
            self.results[(r.device, r.task, r.version)] = r

    def close(self) -> None:
        self.flush()
        self.db.close()

    # ------------------------------------------------------------ bundles

    def add_bundle(self, record: BundleRecord) -> BundleRecord:
        """Record a published version. Publishing the same bytes again is a no-op; publishing
        different bytes under an existing task version is refused (versions are immutable)."""
        existing = self.bundle_for(record.task, record.version)
        if existing is not None:
            if existing.digest != record.digest:
                raise DeployError(f"[deploy] {record.task} {record.version} is already published with "
                                  f"digest {existing.digest[:12]}; versions are immutable, bump the version")
            return existing
        self.db.execute("INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?)",
                        (record.digest, record.task, record.version, record.size,
                         json.dumps(record.manifest), record.created))
        self.bundles[record.digest] = record
        return record

    def bundle_for(self, task: str, version: str) -> BundleRecord | None:
        for b in self.bundles.values():
            if b.task == task and b.version == version:
                return b
        return None

    def tasks(self) -> dict[str, list[BundleRecord]]:
        out: dict[str, list[BundleRecord]] = {}
        for b in sorted(self.bundles.values(), key=lambda b: b.created):
            out.setdefault(b.task, []).append(b)
        return out

    # ------------------------------------------------------------ releases

    def next_release_id(self) -> int:
        return max(self.releases, default=0) + 1

    def save_release(self, release: Release) -> None:
        self.db.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?)",
                        (release.id, release.task, json.dumps(release.to_json())))
        self.releases[release.id] = release

    def releases_of(self, task: str) -> list[Release]:
        """Newest first."""
        return sorted((r for r in self.releases.values() if r.task == task), key=lambda r: -r.id)

    # ------------------------------------------------------------ devices

    def save_device(self, device: Device) -> None:
        self.db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?)",
                        (device.id, device.token_hash, json.dumps(device.attrs), device.enrolled))
        self.devices[device.id] = device

    # ------------------------------------------------------------ deliveries

    def put_delivery(self, delivery: Delivery) -> None:
        key = (delivery.release_id, delivery.device)
        self.deliveries[key] = delivery
        self._dirty.add(key)

    # ------------------------------------------------------------ task results

    def put_result(self, record: ResultRecord) -> bool:
        """Keep ``record`` as the latest of its (device, task, version) unless a report with a
        higher ``seq`` is already stored; returns whether it was kept. Buffered like deliveries."""
        key = (record.device, record.task, record.version)
        old = self.results.get(key)
        if old is not None and old.seq >= record.seq:
            return False
        self.results[key] = record
        self._dirty_results.add(key)
        return True

    def results_of(self, task: str) -> list[ResultRecord]:
        return [r for r in self.results.values() if r.task == task]

    def flush(self) -> int:
        """Write buffered delivery and result changes in one transaction; returns how many."""
        if not self._dirty and not self._dirty_results:
            return 0
        # plain attribute tuples: dataclasses.asdict deep-copies and was most of a flush's cost
        rows = [astuple_shallow(self.deliveries[k]) for k in self._dirty]
        results = [astuple_shallow(self.results[k]) for k in self._dirty_results]
        self._dirty.clear()
        self._dirty_results.clear()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", results)
        return len(rows) + len(results)
