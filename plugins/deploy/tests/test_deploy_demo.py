"""`walle demo` end to end (headless, --json), the example task's model against ONNX
Runtime, and the agent hook the demo relies on: a version that fails to start is switched
back and reported ``failed``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from deploy_testlib import ENROLL, Keys, ThreadServer, make_task

from walle_deploy.agent import AgentConfig, DeviceAgent, TaskStartError
from walle_deploy.bundle import pack_task
from walle_deploy.demo import demo_command
from walle_deploy.demo.task_template import FEATURES, intent_model

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
REPO = Path(__file__).resolve().parents[3]


def run_demo_cli(*args: str, timeout: float = 120) -> tuple[int, dict, float]:
    """``walle demo --json ...`` in a fresh interpreter, as CI and users run it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "walle_core.cli", "demo", "--json", *args], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    try:
        summary = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    except ValueError:
        pytest.fail(f"stdout is not pure JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, summary, wall


def check_summary(summary: dict, devices: int) -> None:
    assert summary["errors"] == []
    assert summary["devices"] == devices and summary["updated"] == devices
    assert summary["events"] > 0 and summary["triggers_fired"] > 0 and summary["inferences"] > 0
    # every firing on a device that runs a good version ran the model (none shed at this load)
    assert summary["inferences"] + summary["shed"] == summary["triggers_fired"]
    assert summary["abort_rollback_observed"] is True
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["backend"] in ("cpu_x86", "reference", "opencl")
    # the broken version never ran an inference: it failed its health check wherever it landed
    assert set(summary["inferences_by_version"]) <= {"1.0.0", "2.0.0"}
    assert summary["health_checks_failed"].get("3.0.0", 0) >= 1
    releases = {r["version"]: r for r in summary["releases"]}
    assert [releases[v]["state"] for v in ("1.0.0", "2.0.0", "3.0.0")] == ["completed", "completed", "rolled_back"]
    for version in ("1.0.0", "2.0.0"):
        stages = releases[version]["stages"]
        assert sum(s["installed"] for s in stages) == devices and sum(s["failed"] for s in stages) == 0
    # what the server aggregated from the devices' results reports is what the devices ran
    server = summary["server_results"]
    assert {v: r["inferences"] for v, r in server.items()} == summary["inferences_by_version"]
    assert sum(r["inferences"] for r in server.values()) == summary["inferences"]
    for r in server.values():
        assert 1 <= r["devices"] <= devices and r["errors"] == 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert set(r["backends"]) == {summary["backend"]}
    broken = releases["3.0.0"]["stages"]
    assert sum(s["installed"] for s in broken) == 0 and sum(s["failed"] for s in broken) >= 1
    # the abort stopped the spread: the broken version never reached the whole fleet
    assert sum(s["failed"] for s in broken) < devices


def test_demo_json_headless() -> None:
    code, summary, wall = run_demo_cli("--devices", "20", "--duration", "10")
    assert code == 0, summary["errors"]
    check_summary(summary, 20)
    assert wall < 60


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (CI installs it: apt-get install mosquitto)")
def test_demo_over_mqtt(tmp_path: Path) -> None:
    from walle_deploy.server.run import free_port
    from walle_deploy.simulate import mosquitto

    with mosquitto(free_port(), tmp_path) as url:
        code, summary, _ = run_demo_cli("--devices", "8", "--duration", "6", "--push", url)
    assert code == 0, summary["errors"]
    check_summary(summary, 8)


def test_core_demo_is_replaced_by_the_plugin() -> None:
    from walle_core.cli import build_cli

    assert build_cli().commands["demo"] is demo_command


def test_bad_push_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(demo_command, ["--push", "http://broker:1883"])
    assert result.exit_code == 2 and "mqtt://HOST:PORT" in result.output


def test_intent_model_matches_onnxruntime() -> None:
    import onnxruntime as ort

    import walle_core as wc

    model = intent_model(seed=7)
    features = np.random.default_rng(0).uniform(0, 2, (1, len(FEATURES))).astype(np.float32)
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"features": features})[0]
    got = wc.load(model).run({"features": features})["intent"]
    assert got.shape == (1, 1) and 0 < got[0, 0] < 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert intent_model(seed=7) == model  # fixed seed, byte-identical bundle


def test_agent_switches_back_and_reports_failed_when_a_version_cannot_start(
        tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    for version in ("1", "2"):
        server.publish(pack_task(make_task(tmp_path, version=version), keys.private, tmp_path / "o"))
    events: list[tuple[str, str]] = []

    def start(path: Path) -> bool:
        if path.resolve().name.startswith("2@"):
            raise TaskStartError("health check failed: boom")
        return True

    async def scenario() -> DeviceAgent:
        agent = DeviceAgent(AgentConfig(server=server.base, device_id="d1", state_dir=tmp_path / "d1",
                                        enroll_token=ENROLL, trusted_keys=keys.trusted, heartbeat_s=60),
                            on_installed=start, on_event=lambda kind, info: events.append((kind, info.get("version"))))
        runner = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 20)
            for version in ("1", "2"):
                await asyncio.to_thread(server.release, task="demo", version=version, stages="100")
                await until(lambda v=version: (v, "installed") in {(ver, kind) for kind, ver in events}
                            or (v, "failed") in {(ver, kind) for kind, ver in events})
            await until(lambda: server.status("demo")["releases"][0]["stages"][0]["failed"] == 1)
            return agent
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await agent.close()

    agent = asyncio.run(scenario())
    assert ("failed", "2") in events
    assert agent.installer.current("demo").version == "1"  # the broken version is not left current
    newest = server.status("demo")["releases"][0]
    assert newest["version"] == "2" and newest["stages"][0]["failed"] == 1


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_demo_records_an_error_when_the_server_missed_results() -> None:
    from types import SimpleNamespace

    from walle_deploy.demo.fleet import FleetStats
    from walle_deploy.demo.scenario import DemoConfig, DemoState, _check_server_results

    state = DemoState(DemoConfig())
    state.fleet = SimpleNamespace(stats=FleetStats(inferences=7))  # type: ignore[assignment]
    state.server_results = {"1.0.0": {"inferences": 3}, "2.0.0": {"inferences": 4}}
    _check_server_results(state)
    assert state.errors == []
    state.server_results["2.0.0"]["inferences"] = 2
    _check_server_results(state)
    assert state.errors == ["the server received results for 5 inferences, the devices ran 7"]
