"""The MQTT channel against a real mosquitto: retained manifests reach devices that connect
after the release, and a rollback republishes them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_testlib import ENROLL, Keys, ThreadServer, make_task
from test_deploy_rollout import cur, wait_for
from test_deploy_simulate import HAVE_MOSQUITTO

from walle_deploy.agent import AgentConfig, DeviceAgent
from walle_deploy.bundle import pack_task
from walle_deploy.push.mqtt import MqttChannel
from walle_deploy.server.run import free_port
from walle_deploy.simulate import mosquitto

pytestmark = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (CI installs it)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with mosquitto(free_port(), tmp_path) as url:
        yield url


@pytest.fixture
def mqtt_server(tmp_path: Path, keys: Keys, broker: str) -> Iterator[ThreadServer]:
    srv = ThreadServer(tmp_path / "server", keys.trusted, MqttChannel(broker, prefix="t"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_offline_device_catches_up_from_retained_manifest_and_rolls_back(
        tmp_path: Path, mqtt_server: ThreadServer, broker: str, keys: Keys) -> None:
    srv = mqtt_server
    srv.publish(pack_task(make_task(tmp_path, version="1", payload=b"one"), keys.private, tmp_path / "o"))
    srv.publish(pack_task(make_task(tmp_path, version="2", payload=b"two"), keys.private, tmp_path / "o"))
    srv.release(task="demo", version="1", stages="100")
    srv.release(task="demo", version="2", target="group=beta", stages="100")

    async def scenario() -> None:
        def agent(name: str, group: str) -> DeviceAgent:
            return DeviceAgent(AgentConfig(server=srv.base, device_id=name, state_dir=tmp_path / name,
                                           attrs={"group": group}, enroll_token=ENROLL, trusted_keys=keys.trusted,
                                           push="mqtt", mqtt_url=broker, mqtt_prefix="t", heartbeat_s=60))

        beta, prod = agent("beta-1", "beta"), agent("prod-1", "prod")
        # both connect only now, after the releases: the retained manifests bring them up to date
        runners = [asyncio.create_task(a.run()) for a in (beta, prod)]
        try:
            await wait_for(lambda: cur(beta) == "2" and cur(prod) == "1")
            r = await asyncio.to_thread(srv.admin.post, "/v1/admin/tasks/demo/rollback")
            assert r.status_code == 200
            await wait_for(lambda: cur(beta) == "1")
            assert cur(prod) == "1"
        finally:
            for runner in runners:
                runner.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*runners, return_exceptions=True)
            await beta.close()
            await prod.close()

    asyncio.run(scenario())
    status = srv.status("demo")["releases"]
    assert status[0]["state"] == "rolled_back" and status[0]["stages"][0]["installed"] == 1
