"""Durable state: a run killed with SIGKILL at random points and restarted until the input
is consumed ends with exactly the same results and state as an uninterrupted run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import walle_core
import walle_stream
from walle_stream import EngineConfig, StreamEngine
from walle_stream.gen import generate_events, write_jsonl
from walle_stream.native import native_available
from walle_stream.state import StateStore
from walle_stream.tasks import load_tasks

TASK = """
name = "{name}"
version = "1"
entry = "main.py"

[trigger]
sequence = {sequence}
within_ms = {within}
contiguity = "{contiguity}"
key = "user"

[trigger.features.views]
window = "sliding"
size_ms = 120000
slide_ms = 30000
agg = "count"
types = ["page_view"]

[trigger.features.price]
window = "session"
gap_ms = 20000
agg = "mean"
field = "attrs.price"

[trigger.features.skus]
window = "count"
size = 10
agg = "last_n"
n = 3
field = "attrs.sku"

[trigger.features.pages]
window = "tumbling"
size_ms = 60000
agg = "distinct"
field = "page"
"""


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    tasks = root / "tasks"
    specs = [("cart", '["page_view:detail", "add_to_cart"]', 30000, "relaxed"),
             ("buy", '["add_to_cart", "page_view:cart", "page_view:checkout", "purchase"]', 60000, "strict"),
             ("browse", '["page_view:list", "page_view:detail", "page_view:detail"]', 20000, "relaxed")]
    for name, sequence, within, contiguity in specs:
        (tasks / name).mkdir(parents=True)
        (tasks / name / "task.toml").write_text(
            TASK.format(name=name, sequence=sequence, within=within, contiguity=contiguity))
    events = root / "events.jsonl"
    write_jsonl(events, generate_events(15_000, users=300, seed=4, bad_rate=0.002, late_rate=0.02))
    small = root / "small.jsonl"
    write_jsonl(small, generate_events(4_000, users=100, seed=5, bad_rate=0.002, late_rate=0.02))
    return tasks, events, small


def snapshot(db: Path) -> dict:
    """Everything the state file holds, normalised (row order does not matter)."""
    store = StateStore(db)
    try:
        meta = store.meta()
        matches = {}
        for field, key, data in store.match_rows():
            data["active"] = sorted(data["active"])
            data["fresh"] = sorted(data["fresh"])
            matches[(field, key)] = data
        windows = {(sid, key): data for sid, key, data in store.window_rows()}
        return {"meta": meta, "fires": store.fires(), "matches": matches, "windows": windows}
    finally:
        store.close()


def committed_offset(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(str(db), timeout=5)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'offset'").fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    return int(row[0]) if row else 0


def replay_command(tasks: Path, events: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "walle_stream", "replay", str(events), "--tasks", str(tasks), "--state", str(db),
            "--no-run", "--record-fires", "--commit-every", "97", "--lateness-ms", "2000", "--json"]


def child_env() -> dict[str, str]:
    paths = [str(Path(walle_core.__file__).parents[1]), str(Path(walle_stream.__file__).parents[1])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def test_killed_runs_resume_with_identical_results(workload, tmp_path):
    tasks, events, _ = workload
    reference_db = tmp_path / "reference.db"
    done = subprocess.run(replay_command(tasks, events, reference_db), env=child_env(), capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["matchers"] == {"key": "native" if native_available() else
                                                   "python: the native matcher is not built"}
    reference = snapshot(reference_db)
    assert reference["meta"]["offset"] == events.stat().st_size
    assert sum(reference["meta"]["fired"].values()) == len(reference["fires"]) > 100

    rng = random.Random(1234)
    db = tmp_path / "killed.db"
    size = events.stat().st_size
    offsets = []
    for attempt in range(8):
        proc = subprocess.Popen(replay_command(tasks, events, db), env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if attempt < 7:
            # attempt 0 dies during start-up; the others once the run has committed
            # progress beyond the previous kill, after a random extra delay
            previous = offsets[-1] if offsets else 0
            while attempt > 0 and proc.poll() is None and committed_offset(db) <= previous:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3) if attempt > 0 else 0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                offsets.append(committed_offset(db))
                continue
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        break
    mid_stream = [o for o in offsets if 0 < o < size]
    assert len(mid_stream) >= 3, f"too few kills landed mid-stream: offsets {offsets}"
    resumed = snapshot(db)
    assert resumed["meta"] == reference["meta"]
    assert resumed["fires"] == reference["fires"]
    assert resumed["windows"] == reference["windows"]
    assert resumed["matches"] == reference["matches"]


def test_in_process_restart_and_source_check(workload, tmp_path):
    tasks, _, events = workload
    config = EngineConfig(commit_every=50, record_fires=True, allowed_lateness_ms=2000)
    whole = StreamEngine(load_tasks([tasks]), config, state_path=tmp_path / "a.db")
    whole.run_jsonl(events)
    whole.close()
    first = StreamEngine(load_tasks([tasks]), config, state_path=tmp_path / "b.db")
    first.run_jsonl(events, limit=2_345)
    first.close()
    second = StreamEngine(load_tasks([tasks]), config, state_path=tmp_path / "b.db")
    assert second.offset == first.offset > 0
    second.run_jsonl(events)
    second.close()
    assert snapshot(tmp_path / "a.db") == snapshot(tmp_path / "b.db")

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"type": "a", "ts": 1, "key": "u"}) + "\n")
    third = StreamEngine(load_tasks([tasks]), config, state_path=tmp_path / "b.db")
    with pytest.raises(walle_stream.errors.StreamConfigError, match="offset of source"):
        third.run_jsonl(other)
    third.close()


@pytest.mark.skipif(not native_available(), reason="walle_stream._ext is not built")
@pytest.mark.parametrize("before, after", [("python", "auto"), ("auto", "python")])
def test_state_moves_between_python_and_native_matchers(workload, tmp_path, before, after):
    """Both matchers save partial matches in one format: a run stopped on one and resumed on
    the other fires exactly like an uninterrupted run (the saved rows may differ only in
    partial matches that had already expired and were not yet dropped)."""
    tasks, _, events = workload
    config = EngineConfig(commit_every=50, record_fires=True, allowed_lateness_ms=2000)
    whole = StreamEngine(load_tasks([tasks]), config, state_path=tmp_path / "a.db")
    whole.run_jsonl(events)
    whole.close()
    first = StreamEngine(load_tasks([tasks]), dataclasses.replace(config, matcher=before), state_path=tmp_path / "b.db")
    first.run_jsonl(events, limit=2_345)
    first.close()
    second = StreamEngine(load_tasks([tasks]), dataclasses.replace(config, matcher=after), state_path=tmp_path / "b.db")
    assert set(second.matchers.values()) == {"native" if after == "auto" else "python: matcher='python'"}
    second.run_jsonl(events)
    second.close()
    want, got = snapshot(tmp_path / "a.db"), snapshot(tmp_path / "b.db")
    assert got["fires"] == want["fires"] and len(want["fires"]) > 20
    assert got["meta"] == want["meta"] and got["windows"] == want["windows"]


def test_state_database_uses_wal(tmp_path):
    store = StateStore(tmp_path / "s.db")
    store.close()
    mode = sqlite3.connect(str(tmp_path / "s.db")).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
