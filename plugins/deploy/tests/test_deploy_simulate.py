"""End-to-end fleet simulations over real loopback sockets (embedded push and MQTT)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from walle_deploy.simulate import GatedTransport, SimulationConfig, percentile, run_simulation

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
    report = asyncio.run(run_simulation(SimulationConfig(devices=50, bundle_kib=8)))
    check_report(report, 50, "embedded")


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (CI installs it: apt-get install mosquitto)")
def test_simulate_50_devices_mqtt() -> None:
    report = asyncio.run(run_simulation(SimulationConfig(devices=50, push="mqtt", bundle_kib=8)))
    check_report(report, 50, "mqtt")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 50) == 0.0


def test_gated_transport_bounds_concurrency_and_frees_slots() -> None:
    """At most `connections` responses are open at once, and closed, streamed or failed
    requests all give their slot back (a leaked slot would stall a simulated fleet)."""
    open_now, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal open_now, peak
        if request.url.path == "/boom":
            raise httpx.ConnectError("refused", request=request)
        open_now += 1
        peak = max(peak, open_now)
        await asyncio.sleep(0.01)
        return httpx.Response(200, content=b"x" * 1000)

    async def main() -> None:
        nonlocal open_now
        gate = GatedTransport(3, inner=httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=gate) as client:
            async def one() -> None:
                nonlocal open_now
                async with client.stream("GET", "http://sim/x") as r:
                    # httpx closes the body once it is read to the end, and that frees the slot
                    assert len(await r.aread()) == 1000
                    open_now -= 1
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(one() for _ in range(20)))
            with pytest.raises(httpx.ConnectError):
                await client.get("http://sim/boom")
            assert (await client.get("http://sim/x")).status_code == 200
            assert gate.free_slots == 3

    asyncio.run(main())
    assert peak == 3
