"""Release policy on a live server: staged stickiness, automatic advance, abort, rollback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from deploy_testlib import ENROLL, Keys, ThreadServer, make_task

from walle_deploy.agent import AgentConfig, DeviceAgent
from walle_deploy.bundle import pack_task
from walle_deploy.policy import first_stage, parse_stages


def enroll_fleet(server: ThreadServer, n: int) -> dict[str, str]:
    return {f"dev-{i:03d}": server.enroll(f"dev-{i:03d}", region=("eu", "us")[i % 2]) for i in range(n)}


def notified_versions(server: ThreadServer, tokens: dict[str, str]) -> dict[str, str]:
    out = {}
    for device, token in tokens.items():
        with server.device(token) as dev:
            for notice in dev.get("/v1/device/notices").json()["notices"]:
                out[device] = notice["version"]
    return out


def test_stages_are_sticky_on_the_server(tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    server.publish(pack_task(make_task(tmp_path), keys.private, tmp_path / "o"))
    tokens = enroll_fleet(server, 80)
    server.release(task="demo", version="1.0.0", stages="10,50,100", auto_advance=False)
    stages = parse_stages("10,50,100")
    reached = []
    for k in range(3):
        got = set(notified_versions(server, tokens))
        expected = {d for d in tokens if first_stage(stages, "demo", d, {}) <= k}
        assert got == expected
        reached.append(got)
        if k < 2:
            assert server.admin.post("/v1/admin/tasks/demo/advance").status_code == 200
    assert reached[0] <= reached[1] <= reached[2] and len(reached[2]) == 80
    table = server.status("demo")["releases"][0]["stages"]
    assert [s["targeted"] for s in table] == [
        sum(first_stage(stages, "demo", d, {}) == k for d in tokens) for k in range(3)]


def test_auto_advance_and_abort_on_failure_rate(tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    server.publish(pack_task(make_task(tmp_path), keys.private, tmp_path / "o"))
    tokens = enroll_fleet(server, 60)
    stages = parse_stages("20,60,100")
    rid = server.release(task="demo", version="1.0.0", stages="20,60,100", abort_failure_rate=0.25,
                         min_reports=6, advance_at=1.0)["id"]
    by_stage = {k: [d for d in tokens if first_stage(stages, "demo", d, {}) == k] for k in range(3)}
    assert len(by_stage[0]) >= 6

    def report(device: str, state: str) -> None:
        with server.device(tokens[device]) as dev:
            dev.get("/v1/device/notices")
            assert dev.post("/v1/device/report", json={"release": rid, "state": state, "reason": "x"}).status_code == 200

    for device in by_stage[0]:  # a healthy first stage advances on its own
        report(device, "installed")
    assert server.status("demo")["releases"][0]["stage_index"] == 1
    # failures in the second stage: abort exactly when failed / reported first exceeds 25 %
    n0 = len(by_stage[0])
    abort_at = n0 // 3 + 1
    assert len(by_stage[1]) >= abort_at
    for i, device in enumerate(by_stage[1][:abort_at], start=1):
        assert server.status("demo")["releases"][0]["state"] == "active"
        report(device, "failed")
        assert (i / (n0 + i) > 0.25) == (i == abort_at)
    status = server.status("demo")["releases"][0]
    assert status["state"] == "aborted" and "exceeded 25.0%" in status["reason"]
    assert status["stage_index"] == 1 and status["stages"][1]["failed"] == abort_at
    # the rollout stops: a stage-2 device is never offered the aborted version and cannot pull it
    late = by_stage[2][0]
    with server.device(tokens[late]) as dev:
        assert dev.get("/v1/device/notices").json()["notices"] == []
        digest = server.status("demo")["releases"][0]["digest"]
        assert dev.get(f"/v1/bundles/{digest}").status_code == 403
    # devices that already run it keep it (abort is not rollback)
    assert notified_versions(server, {by_stage[0][0]: tokens[by_stage[0][0]]}) == {by_stage[0][0]: "1.0.0"}


def test_rollback_returns_devices_to_the_previous_release(tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    v1 = server.publish(pack_task(make_task(tmp_path, version="1"), keys.private, tmp_path / "o"))
    v2 = server.publish(pack_task(make_task(tmp_path, version="2", payload=b"v2"), keys.private, tmp_path / "o"))
    tokens = enroll_fleet(server, 10)
    server.release(task="demo", version="1", stages="100")
    server.release(task="demo", version="2", stages="100")
    assert set(notified_versions(server, tokens).values()) == {"2"}
    r = server.admin.post("/v1/admin/tasks/demo/rollback")
    assert r.status_code == 200 and r.json()["version"] == "1"
    assert set(notified_versions(server, tokens).values()) == {"1"}
    with server.device(tokens["dev-000"]) as dev:
        assert dev.get(f"/v1/bundles/{v2['digest']}").status_code == 403
        assert dev.get(f"/v1/bundles/{v1['digest']}").status_code == 200
    assert [rel["state"] for rel in server.status("demo")["releases"]] == ["rolled_back", "completed"]
    r = server.admin.post("/v1/admin/tasks/demo/rollback")
    assert r.status_code == 409 and "no earlier release" in r.json()["error"]


def test_agents_install_then_roll_back_without_downloading(tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    """Over the embedded push channel: v1 then v2 are pushed and installed; after a rollback
    the agents switch back to the v1 tree they kept, pulling nothing."""
    server.publish(pack_task(make_task(tmp_path, version="1", payload=b"one"), keys.private, tmp_path / "o"))
    server.publish(pack_task(make_task(tmp_path, version="2", payload=b"two"), keys.private, tmp_path / "o"))
    started_dirs: list[Path] = []

    async def scenario() -> list[DeviceAgent]:
        agents = [DeviceAgent(AgentConfig(server=server.base, device_id=f"a{i}", state_dir=tmp_path / f"a{i}",
                                          enroll_token=ENROLL, trusted_keys=keys.trusted, heartbeat_s=60),
                              on_installed=lambda path: started_dirs.append(path) or True)
                  for i in range(4)]
        runners = [asyncio.create_task(a.run()) for a in agents]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 20)
            for version in ("1", "2"):
                await asyncio.to_thread(server.release, task="demo", version=version, stages="100")
                await wait_for(lambda v=version: all(cur(a) == v for a in agents))
            served = server.state.metrics.bytes_served
            r = await asyncio.to_thread(server.admin.post, "/v1/admin/tasks/demo/rollback")
            assert r.status_code == 200
            await wait_for(lambda: all(cur(a) == "1" for a in agents))
            assert server.state.metrics.bytes_served == served
            await wait_for(lambda: server.status("demo")["releases"][1]["stages"][0]["installed"] == 4)
            return agents
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            await asyncio.gather(*(a.close() for a in agents))

    agents = asyncio.run(scenario())
    assert (agents[0].installer.current("demo").path / "models" / "model.bin").read_bytes() == b"one"
    assert len(started_dirs) == 12  # every install and the rollback switch started the task
    states = server.status("demo")["releases"]
    assert states[0]["state"] == "rolled_back" and states[0]["stages"][0]["installed"] == 4


def cur(agent: DeviceAgent) -> str | None:
    installed = agent.installer.current("demo")
    return None if installed is None else installed.version


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_agent_reports_downloaded_only_for_a_slow_install(tmp_path: Path, server: ThreadServer, keys: Keys,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """"installed" implies "downloaded": a quick install sends one report; an install still
    verifying after DOWNLOADED_REPORT_AFTER_S sends "downloaded" first. The server counts both
    devices as downloaded and installed either way."""
    import walle_deploy.agent as agent_module

    server.publish(pack_task(make_task(tmp_path), keys.private, tmp_path / "o"))
    monkeypatch.setattr(agent_module, "DOWNLOADED_REPORT_AFTER_S", 0.3)
    sent: dict[str, list[str]] = {"quick": [], "slow": []}

    async def scenario() -> None:
        agents = {}
        for name in sent:
            agent = DeviceAgent(AgentConfig(server=server.base, device_id=name, state_dir=tmp_path / name,
                                            enroll_token=ENROLL, trusted_keys=keys.trusted, heartbeat_s=60))
            original = agent.report

            async def report(release: int, state: str, reason: str = "", _o=original, _n=name) -> None:
                sent[_n].append(state)
                await _o(release, state, reason)

            agent.report = report  # type: ignore[method-assign]
            agents[name] = agent
        real_install = agents["slow"].installer.install

        def slow_install(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(1.0)  # a large bundle still verifying
            return real_install(*args, **kwargs)

        agents["slow"].installer.install = slow_install  # type: ignore[method-assign]
        runners = [asyncio.create_task(a.run()) for a in agents.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents.values())), 20)
            await asyncio.to_thread(server.release, task="demo", version="1.0.0", stages="100")
            await wait_for(lambda: server.status("demo")["releases"][0]["stages"][0]["installed"] == 2)
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            await asyncio.gather(*(a.close() for a in agents.values()))

    asyncio.run(scenario())
    assert sent == {"quick": ["installed"], "slow": ["downloaded", "installed"]}
    stage = server.status("demo")["releases"][0]["stages"][0]
    assert (stage["downloaded"], stage["installed"]) == (2, 2)
