"""`walle stream gen` and `walle stream replay` through click, and the plugin hook."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner
from oracle import OracleMatcher

from walle_core.cli.terminal import Terminal
from walle_stream import Event, native_available, plugin
from walle_stream.cli import stream_group
from walle_stream.pattern import trigger_from_table

TASK = """
name = "cart"
version = "1"
entry = "main.py"

[trigger]
sequence = ["page_view:detail", "add_to_cart"]
within_ms = 30000
key = "user"

[trigger.features.views]
window = "tumbling"
size_ms = 60000
agg = "count"
"""


def invoke(*args):
    result = CliRunner().invoke(stream_group, list(args), obj=Terminal(), catch_exceptions=False)
    return result


def test_gen_is_seeded_and_replay_reports_json(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert invoke("gen", "-o", str(first), "--events", "3000", "--seed", "9", "--bad-rate", "0.01").exit_code == 0
    assert invoke("gen", "-o", str(second), "--events", "3000", "--seed", "9", "--bad-rate", "0.01").exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text().splitlines()
    assert len(lines) == 3000

    (tmp_path / "tasks" / "cart").mkdir(parents=True)
    (tmp_path / "tasks" / "cart" / "task.toml").write_text(TASK)
    result = invoke("replay", str(first), "--tasks", str(tmp_path / "tasks"), "--no-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["events"] + report["rejected"] == 3000 and report["rejected"] > 0
    assert isinstance(report["events_per_s"], float)
    assert set(report["tasks"]) == {"cart"} and report["tasks"]["cart"]["fired"] > 0
    assert report["matchers"] == {"key": "native" if native_available() else "python: the native matcher is not built"}

    # the oracle matcher over the events the engine accepts (valid, not behind the watermark)
    oracle = OracleMatcher([trigger_from_table("cart", {"sequence": ["page_view:detail", "add_to_cart"],
                                                        "within_ms": 30000})])
    fired, max_ts = 0, -1
    for line in lines:
        raw = json.loads(line)
        if not (isinstance(raw.get("ts"), int) and isinstance(raw.get("key"), str)):
            continue
        if raw["ts"] < max_ts - 5000:  # the default allowed lateness: dropped
            continue
        max_ts = max(max_ts, raw["ts"])
        fired += len(oracle.process(raw["key"], Event(**raw)))
    assert report["tasks"]["cart"]["fired"] == fired


def test_replay_human_output_and_errors(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text('{"type": "page_view", "ts": 1, "key": "u", "page": "detail"}\n'
                      '{"type": "add_to_cart", "ts": 2, "key": "u"}\nnot json\n')
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "task.toml").write_text(TASK)
    result = invoke("replay", str(events), "--tasks", str(tmp_path / "t"), "--no-run")
    assert result.exit_code == 0
    assert "cart" in result.stdout and "invalid JSON" in result.stdout
    (tmp_path / "t" / "task.toml").write_text(TASK.replace("within_ms = 30000", "within_ms = -1"))
    result = CliRunner().invoke(stream_group, ["replay", str(events), "--tasks", str(tmp_path / "t")],
                                obj=Terminal())
    assert result.exit_code != 0 and "within_ms" in str(result.exception)


def test_plugin_registers_the_stream_group():
    root = click.Group("walle")
    plugin.walle_register_commands(root)
    assert root.commands["stream"] is stream_group
    assert set(stream_group.commands) == {"replay", "gen"}
