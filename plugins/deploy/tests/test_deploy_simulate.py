"""End-to-end fleet simulations over real loopback sockets (embedded push and MQTT)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from walle_deploy.errors import DeployError
from walle_deploy.simdevice import device_attrs
from walle_deploy.simulate import Fleet, SimulationConfig, Worker, percentile, run_simulation

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def check_report(report: dict, devices: int, push: str) -> None:
    assert report["devices"] == devices and report["push"] == push
    assert report["installed"] == devices and report["failed"] == 0
    assert report["tampered_rejected"] is True
    assert report["release_state"] == "completed"
    assert 0 < report["delivery_s"]["p50"] <= report["delivery_s"]["p99"] < 30
    assert sum(s["targeted"] for s in report["stages"]) == devices
    assert [s["installed"] for s in report["stages"]] == [s["targeted"] for s in report["stages"]]
    # every device pulled the bundle once (plus the probe device's corrupt pull)
    bundle_bytes = report["bytes_served"]
    assert bundle_bytes > devices * 8 * 1024


def test_simulate_50_devices_embedded() -> None:
    report = asyncio.run(run_simulation(SimulationConfig(devices=50, bundle_kib=8, rate=200, jitter_s=0.2)))
    check_report(report, 50, "embedded")
    assert report["workers"] == 2 and report["policy"]["rate"] == 200 and report["policy"]["jitter_s"] == 0.2
    assert report["reconnects"] == 0


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (CI installs it: apt-get install mosquitto)")
def test_simulate_50_devices_mqtt() -> None:
    report = asyncio.run(run_simulation(SimulationConfig(devices=50, push="mqtt", bundle_kib=8)))
    check_report(report, 50, "mqtt")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 50) == 0.0


def test_simulation_config_is_checked() -> None:
    for bad in ({"devices": 0}, {"workers": 0}, {"rate": -1.0}, {"jitter_s": -0.5}, {"push": "carrier-pigeon"}):
        with pytest.raises(DeployError):
            SimulationConfig(**bad).check()  # type: ignore[arg-type]


def test_device_attributes_depend_only_on_seed_and_index() -> None:
    """The coordinator and the workers compute them independently and must agree."""
    assert device_attrs(17, 3) == device_attrs(17, 3)
    assert [device_attrs(i, 0)["region"] for i in range(4)] == ["eu", "us", "ap", "eu"]
    assert len({tuple(device_attrs(i, 0).items()) for i in range(200)}) > 50
    assert device_attrs(5, 0) != device_attrs(5, 1) or device_attrs(6, 0) != device_attrs(6, 1)


@pytest.mark.parametrize("lines, lost", [
    (['{"connected": 1, "cpu_s": 0.1}', '{"events": [["t", "installed", "d", 1.0]], "cpu_s": 0.2}',
      '{"done": true, "cpu_s": 0.3}'], []),
    (['{"connected": 1, "cpu_s": 0.1}'], [0]),  # the stream ends without "done": the worker died
])
def test_worker_stream_is_merged_and_a_lost_worker_noticed(lines: list[str], lost: list[int]) -> None:
    async def main() -> Fleet:
        fleet = Fleet()
        script = "".join(f"print({line!r})\n" for line in lines)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE)
        worker = Worker(0, proc, fleet)
        assert (await worker.connected)["connected"] == 1
        await worker.stop()
        return fleet

    fleet = asyncio.run(main())
    assert fleet.lost == lost
    assert fleet.cpu_s[0] == (0.3 if not lost else 0.1)
    assert fleet.count("t", "installed") == (0 if lost else 1)
