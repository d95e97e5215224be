"""Task results flowing back to the server: ``POST /v1/device/results`` (auth, strict
validation, release check), the per-version aggregate in the admin status and the CLI, the
store's persistence, and ``DeviceAgent.report_results``."""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from deploy_testlib import ADMIN, Keys, ThreadServer, make_task

from walle_deploy import plugin
from walle_deploy.agent import AgentConfig, DeviceAgent
from walle_deploy.bundle import PackedBundle, pack_task
from walle_deploy.server.results import MAX_RESULTS_BODY, ResultRecord
from walle_deploy.server.store import Store

GOOD = {"inferences": 10, "errors": 1, "latency_ms": {"p50": 1.5, "p99": 9.0}, "backend": "cpu_x86"}


def body(version: str = "1.0.0", seq: int = 1, **metrics: Any) -> dict[str, Any]:
    return {"task": "demo", "version": version, "seq": seq, "metrics": {**GOOD, **metrics}}


@pytest.fixture
def released(server: ThreadServer, bundle: PackedBundle) -> dict[str, str]:
    """demo 1.0.0 released to region=eu; one eu and one us device, by token."""
    server.publish(bundle)
    tokens = {"eu": server.enroll("eu-1", region="eu"), "us": server.enroll("us-1", region="us")}
    server.release(task="demo", version="1.0.0", target="region=eu", stages="100")
    return tokens


def test_results_need_a_device_token(server: ThreadServer, released: dict[str, str]) -> None:
    for headers in ({}, {"Authorization": f"Bearer {ADMIN}"},
                    {"Authorization": "Bearer " + released["eu"].split(":")[0] + ":forged"}):
        r = server.http.post("/v1/device/results", json=body(), headers=headers)
        assert r.status_code == 401 and "device token" in r.json()["error"]
    with server.device(released["eu"]) as dev:
        r = dev.post("/v1/device/results", json=body())
        assert r.status_code == 200 and r.json() == {"ok": True, "stored": True}


@pytest.mark.parametrize(("payload", "status", "names"), [
    ({"task": "demo", "version": "1.0.0", "metrics": GOOD}, 400, "'seq'"),
    ({**body(), "seq": -1}, 400, "'seq'"),
    ({**body(), "seq": "1"}, 400, "'seq'"),
    ({**body(), "seq": 2**63}, 400, "'seq'"),
    ({**body(), "task": 5}, 400, "'task'"),
    ({**body(), "extra": 1}, 400, "'extra'"),
    ({**body(), "metrics": [1]}, 400, "'metrics'"),
    ({**body(), "metrics": {"errors": 0}}, 400, "metrics.inferences"),
    (body(inferences=-1), 400, "metrics.inferences"),
    (body(inferences=1.5), 400, "metrics.inferences"),
    (body(inferences=True), 400, "metrics.inferences"),
    (body(errors="0"), 400, "metrics.errors"),
    (body(latency_ms={"p50": 1.0}), 400, "metrics.latency_ms"),
    (body(latency_ms={"p50": "1", "p99": 2.0}), 400, "metrics.latency_ms.p50"),
    (body(latency_ms={"p50": 1.0, "p99": -2.0}), 400, "metrics.latency_ms.p99"),
    (body(latency_ms={"p50": 5.0, "p99": 2.0}), 400, "larger than 'p99'"),
    (body(backend=7), 400, "metrics.backend"),
    (body(backend="x" * 65), 400, "metrics.backend"),
    (body(speed=1), 400, "metrics.speed"),
    ({**body(), "task": "nope"}, 404, "unknown task 'nope'"),
    (body(version="9.9.9"), 403, "not released to device eu-1"),
])
def test_results_validation(server: ThreadServer, released: dict[str, str], payload: dict[str, Any], status: int,
                            names: str) -> None:
    with server.device(released["eu"]) as dev:
        r = dev.post("/v1/device/results", json=payload)
    assert r.status_code == status, r.text
    assert names in r.json()["error"]
    assert server.status("demo")["results"] == {}


def test_results_raw_body_errors(server: ThreadServer, released: dict[str, str]) -> None:
    with server.device(released["eu"]) as dev:
        big = body(backend="x")
        big["metrics"]["backend"] = "x" * MAX_RESULTS_BODY
        assert dev.post("/v1/device/results", content=json.dumps(big)).status_code == 413
        assert dev.post("/v1/device/results", content=b"{not json").status_code == 400
        assert dev.post("/v1/device/results", json=[body()]).status_code == 400


def test_version_must_be_released_to_the_reporting_device(server: ThreadServer, released: dict[str, str]) -> None:
    with server.device(released["us"]) as dev:  # 1.0.0 targets region=eu only
        r = dev.post("/v1/device/results", json=body())
    assert r.status_code == 403 and "not released to device us-1" in r.json()["error"]


def test_results_survive_a_rollback_of_their_version(tmp_path: Path, server: ThreadServer, keys: Keys,
                                                     released: dict[str, str]) -> None:
    server.publish(pack_task(make_task(tmp_path / "t2", version="2.0.0"), keys.private, tmp_path / "o2"))
    server.release(task="demo", version="2.0.0", target="region=eu", stages="100")
    with server.device(released["eu"]) as dev:
        assert dev.get("/v1/device/notices").status_code == 200  # the device is notified of 2.0.0
        assert server.admin.post("/v1/admin/tasks/demo/rollback").status_code == 200
        # what it ran of 2.0.0 before the rollback still counts
        assert dev.post("/v1/device/results", json=body(version="2.0.0")).status_code == 200
    assert server.status("demo")["results"]["2.0.0"]["inferences"] == 10


def test_aggregate_per_version(tmp_path: Path, server: ThreadServer, keys: Keys, bundle: PackedBundle) -> None:
    server.publish(bundle)
    server.publish(pack_task(make_task(tmp_path / "t2", version="2.0.0"), keys.private, tmp_path / "o2"))
    tokens = [server.enroll(f"d{i}") for i in range(4)]
    server.release(task="demo", version="1.0.0", stages="100")
    reports = [  # (device, version, inferences, errors, p50, p99, backend)
        (0, "1.0.0", 10, 0, 1.0, 4.0, "cpu_x86"), (1, "1.0.0", 20, 2, 3.0, 9.5, "cpu_x86"),
        (2, "1.0.0", 5, 0, 2.0, 3.0, "reference"), (3, "1.0.0", 0, 1, None, None, ""),
    ]
    for device, version, n, errors, p50, p99, backend in reports:
        latency = None if p50 is None else {"p50": p50, "p99": p99}
        with server.device(tokens[device]) as dev:
            r = dev.post("/v1/device/results", json=body(version, seq=5, inferences=n, errors=errors,
                                                         latency_ms=latency, backend=backend))
            assert r.status_code == 200, r.text
    server.release(task="demo", version="2.0.0", stages="100")
    with server.device(tokens[0]) as dev:
        # cumulative: a newer report replaces the device's last one, an older (smaller seq) is ignored
        assert dev.post("/v1/device/results", json=body("1.0.0", seq=6, inferences=12, errors=0,
                                                        latency_ms={"p50": 1.0, "p99": 4.0})).json()["stored"]
        assert not dev.post("/v1/device/results", json=body("1.0.0", seq=4, inferences=999)).json()["stored"]
        assert dev.post("/v1/device/results", json=body("2.0.0", seq=7, inferences=3)).status_code == 200
    results = server.status("demo")["results"]
    assert results["1.0.0"] == {
        "devices": 4, "inferences": 12 + 20 + 5 + 0, "errors": 0 + 2 + 0 + 1,
        "latency_ms": {"p50": statistics.median([1.0, 3.0, 2.0]), "p99": 9.5},
        "backends": {"cpu_x86": 2, "reference": 1},
    }
    assert results["2.0.0"] == {"devices": 1, "inferences": 3, "errors": 1,
                                "latency_ms": {"p50": 1.5, "p99": 9.0}, "backends": {"cpu_x86": 1}}

    env = {"WALLE_DEPLOY_SERVER": server.base, "WALLE_DEPLOY_TOKEN": ADMIN}
    import click

    root = click.Group("walle")
    plugin.walle_register_commands(cli=root)
    r = CliRunner().invoke(root, ["deploy", "status", "demo", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.output)["results"] == results
    r = CliRunner().invoke(root, ["deploy", "status", "demo"], env=env)
    assert r.exit_code == 0 and "task results" in r.output and "9.50" in r.output and "37" in r.output


def test_store_keeps_results_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "deploy.sqlite3"
    store = Store(path)
    record = ResultRecord("d1", "demo", "1.0.0", 3, 42, 1, 0.5, 2.5, "cpu_x86", 1.0)
    assert store.put_result(record)
    assert not store.put_result(ResultRecord("d1", "demo", "1.0.0", 2, 1, 0, None, None, "", 2.0))
    store.close()
    reopened = Store(path)  # schema creation runs again on an existing database
    try:
        assert reopened.results_of("demo") == [record]
        assert reopened.results_of("other") == []
    finally:
        reopened.close()


def test_agent_reports_results(tmp_path: Path, server: ThreadServer, keys: Keys,
                               released: dict[str, str]) -> None:
    async def scenario() -> tuple[bool, bool]:
        agent = DeviceAgent(AgentConfig(server=server.base, device_id="eu-1", state_dir=tmp_path / "agent",
                                        trusted_keys=keys.trusted))
        agent.token = released["eu"]
        try:
            ok = await agent.report_results("demo", "1.0.0", GOOD)
            refused = await agent.report_results("demo", "1.0.0", {**GOOD, "inferences": -1})
        finally:
            await agent.close()
        return ok, refused

    ok, refused = asyncio.run(scenario())
    assert ok and not refused
    assert server.status("demo")["results"]["1.0.0"]["inferences"] == GOOD["inferences"]
