"""The simulated fleet of the demo: each device is a deploy agent, a stream engine and a
share of one compute container.

A device in the field runs one agent, one stream engine and one container. Here every
device has its own :class:`DeviceAgent` (own state directory, own push connection) and its
own :class:`StreamEngine` fed by its own synthetic user, but all devices share one
:class:`Container`: on a 2-core machine, fifty containers would only fight over the same
two cores, and one container with a bounded queue shows the back-pressure honestly.

Everything but the container's worker threads runs on the caller's asyncio loop, so the
per-device state needs no locks. A version becomes *active* on a device (its trigger
registered, its firings run) only after a start-up health check in the container passed;
a version that fails it is switched back by the agent and reported ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from walle_deploy.agent import AgentConfig, DeviceAgent, TaskStartError
from walle_deploy.demo.task_template import TASK_NAME, health_check_inputs
from walle_deploy.signing import TrustedKeys

#: how long a start-up health check may take: the first load of a model compiles it
HEALTH_CHECK_TIMEOUT_S = 20.0
#: mean gap between one user's events; ~7 events/s per device keeps triggers frequent
#: while 50 devices cost the stream engines only a few percent of a core
MEAN_EVENT_GAP_MS = 150.0
#: latency samples kept for percentiles
MAX_SAMPLES = 100_000
#: latency samples kept per device and version for the percentiles it reports to the server
MAX_DEVICE_SAMPLES = 10_000
#: how often every device sends its results to the server (batched, not one per inference)
RESULTS_INTERVAL_S = 2.0
#: results reports in flight at once, so a large fleet does not open a connection each
RESULTS_CONCURRENCY = 16


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return round(ordered[int(rank) - 1], 3)


@dataclass
class FleetStats:
    """What happened on the devices, as the view and the summary show it."""

    events: int = 0
    triggers_fired: int = 0
    inferences: int = 0
    offers: int = 0
    shed: int = 0  # firings dropped because the container's queue was full (back-pressure)
    latencies_ms: list[float] = field(default_factory=list)
    backends: Counter[str] = field(default_factory=Counter)
    inferences_by_version: Counter[str] = field(default_factory=Counter)
    health_checks_failed: Counter[str] = field(default_factory=Counter)
    install_failures: Counter[str] = field(default_factory=Counter)
    #: unexpected problems: a failed inference, an agent failure on a good version
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the inference latencies in ms (None before any)."""
        return percentile(self.latencies_ms, q)

    def error(self, message: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(message)


@dataclass
class VersionResults:
    """One device's cumulative results for one task version: what it reports to the server."""

    inferences: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    backends: Counter[str] = field(default_factory=Counter)
    #: changed since the last report the server accepted
    dirty: bool = False

    def metrics(self) -> dict[str, Any]:
        p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
        return {"inferences": self.inferences, "errors": self.errors,
                "latency_ms": None if p50 is None or p99 is None else {"p50": p50, "p99": p99},
                "backend": self.backends.most_common(1)[0][0] if self.backends else ""}


@dataclass
class Device:
    """One simulated device: its agent, its stream engine, its user's event stream, and the
    task version currently active on it."""

    agent: DeviceAgent
    engine: Any
    events: Iterator[dict[str, Any]]
    next_event: dict[str, Any] | None = None
    active_dir: Path | None = None
    active_version: str | None = None
    stream_task: Any = None
    versions_seen: list[str] = field(default_factory=list)
    results: dict[str, VersionResults] = field(default_factory=dict)

    def results_of(self, version: str) -> VersionResults:
        return self.results.setdefault(version, VersionResults())

    @property
    def device_id(self) -> str:
        return self.agent.config.device_id


class Fleet:
    """``count`` devices against the server at ``base``; all share ``container``. A failure of
    a version in ``good_versions`` is an error; of any other version, an expected outcome."""

    def __init__(self, count: int, base: str, root: Path, container: Any, enroll_token: str, keys: TrustedKeys,
                 good_versions: frozenset[str], push: str = "embedded", mqtt_url: str | None = None,
                 mqtt_prefix: str = "walle", seed: int = 0, start_ms: int | None = None) -> None:
        from walle_stream import CallbackSink, StreamEngine
        from walle_stream.gen import generate_events

        self.container = container
        self.stats = FleetStats()
        self.good_versions = good_versions
        self.http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32))
        self.start_ms = start_ms if start_ms is not None else int(time.time() * 1000)
        self.devices: list[Device] = []
        self._pending: list[tuple[Any, Device, str]] = []
        self._runners: list[asyncio.Task[None]] = []
        for i in range(count):
            device_id = f"device-{i:03d}"
            holder: list[Device] = []
            agent = DeviceAgent(
                AgentConfig(server=base, device_id=device_id, state_dir=root / device_id,
                            attrs={"region": ("eu", "us", "ap")[i % 3], "group": "demo"},
                            enroll_token=enroll_token, trusted_keys=keys, push=push, mqtt_url=mqtt_url,
                            mqtt_prefix=mqtt_prefix, heartbeat_s=600, backoff_initial_s=0.2, backoff_max_s=2),
                http=self.http,
                on_installed=lambda path, h=holder: self._on_installed(h[0], path),
                on_event=self._on_agent_event)
            sink = CallbackSink(lambda task, key, features, event, h=holder: self._on_fire(h[0], features, event))
            # one user per device (a phone), with its own seed so devices behave differently
            events = generate_events(10**9, users=1, seed=seed * 100_003 + i, start_ts=self.start_ms,
                                     mean_gap_ms=MEAN_EVENT_GAP_MS, late_rate=0.0)
            device = Device(agent, StreamEngine(sinks=[sink]), events)
            holder.append(device)
            self.devices.append(device)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Enroll every device and wait until each holds its push connection."""
        gate = asyncio.Semaphore(16)

        async def enroll(device: Device) -> None:
            async with gate:
                await device.agent.ensure_enrolled()

        await asyncio.gather(*(enroll(d) for d in self.devices))
        self._runners = [asyncio.create_task(d.agent.run()) for d in self.devices]
        await asyncio.gather(*(d.agent.connected.wait() for d in self.devices))

    async def close(self) -> None:
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        await asyncio.gather(*(d.agent.close() for d in self.devices))
        await self.http.aclose()

    # ------------------------------------------------------------ install -> start

    async def _on_installed(self, device: Device, task_dir: Path) -> bool:
        """The agent installed ``task_dir``: health-check it in the container, then make it
        the device's active version (register its trigger if it changed)."""
        from walle_core.container import TaskFailed
        from walle_stream import load_task

        task_dir = task_dir.resolve()
        version = task_dir.name.split("@", 1)[0]
        try:
            handle = await asyncio.to_thread(self.container.submit, task_dir, health_check_inputs(), 10)
            deadline = time.monotonic() + HEALTH_CHECK_TIMEOUT_S
            while not handle.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            handle.result(0)
            stream_task = load_task(task_dir)
        except TaskFailed as exc:
            self.stats.health_checks_failed[version] += 1
            raise TaskStartError(f"[demo] {TASK_NAME} {version} failed its health check: {exc.status}: "
                                 f"{exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - a task that cannot even load must not start either
            self.stats.health_checks_failed[version] += 1
            raise TaskStartError(f"[demo] {TASK_NAME} {version} could not start: {exc}") from None
        if stream_task != device.stream_task:
            if device.stream_task is not None:
                device.engine.remove_task(device.stream_task.name)
            device.engine.add_task(stream_task)
            device.stream_task = stream_task
        device.active_dir, device.active_version = task_dir, version
        device.versions_seen.append(version)
        return True

    def _on_agent_event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "failed":
            version = str(info.get("version"))
            self.stats.install_failures[version] += 1
            if version in self.good_versions:
                self.stats.error(f"{info['device']}: {TASK_NAME} {version} failed: {info.get('reason')}")

    # ------------------------------------------------------------ behaviour traffic

    def pump(self, now_ms: int) -> None:
        """Feed every device the events of its user that are due by ``now_ms``."""
        for device in self.devices:
            while True:
                event = device.next_event or next(device.events)
                if event["ts"] > now_ms:
                    device.next_event = event
                    break
                device.next_event = None
                device.engine.push(event)
                self.stats.events += 1

    def _on_fire(self, device: Device, features: dict[str, Any], event: Any) -> None:
        from walle_core.container import QueueFull

        self.stats.triggers_fired += 1
        if device.active_dir is None:
            return
        try:
            handle = self.container.submit(device.active_dir, {**features, "event": event.to_dict()}, block=False)
        except QueueFull:
            self.stats.shed += 1
            return
        self._pending.append((handle, device, device.active_version or "?"))

    def reap(self) -> None:
        """Account for every finished inference."""
        from walle_core.container import TaskFailed

        still = []
        for handle, device, version in self._pending:
            if not handle.done():
                still.append((handle, device, version))
                continue
            own = device.results_of(version)
            own.dirty = True
            try:
                result = handle.result(0)
            except TaskFailed as exc:
                own.errors += 1
                self.stats.error(f"{device.device_id}: inference with {version} failed: {exc.status}: {exc.message}")
                continue
            backend = str(result.get("backend"))
            self.stats.inferences += 1
            self.stats.inferences_by_version[version] += 1
            self.stats.offers += bool(result.get("offer"))
            self.stats.backends[backend] += 1
            own.inferences += 1
            own.backends[backend] += 1
            if handle.latency_s is not None:
                if len(self.stats.latencies_ms) < MAX_SAMPLES:
                    self.stats.latencies_ms.append(handle.latency_s * 1e3)
                if len(own.latencies_ms) < MAX_DEVICE_SAMPLES:
                    own.latencies_ms.append(handle.latency_s * 1e3)
        self._pending = still

    # ------------------------------------------------------------ results -> server

    async def report_results(self) -> int:
        """Every device sends its changed per-version results to the server (one request per
        device and version that changed). Returns how many reports the server did not store;
        a refused report stays dirty and goes again next time."""
        gate = asyncio.Semaphore(RESULTS_CONCURRENCY)

        async def send(device: Device, version: str, own: VersionResults) -> bool:
            async with gate:
                own.dirty = False
                if await device.agent.report_results(TASK_NAME, version, own.metrics()):
                    return True
                own.dirty = True
                return False

        sends = [send(d, v, own) for d in self.devices for v, own in d.results.items() if own.dirty]
        results = await asyncio.gather(*sends)
        return sum(not ok for ok in results)

    async def results_loop(self, stop: asyncio.Event, interval_s: float = RESULTS_INTERVAL_S) -> None:
        """Report results every ``interval_s`` until ``stop``; the caller sends the final
        report itself, after the container drained."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                await self.report_results()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the inferences still queued or running, then account for them."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            self.reap()
            await asyncio.sleep(0.02)
        self.reap()
        if self._pending:
            self.stats.error(f"{len(self._pending)} inferences did not finish within {timeout_s:.0f} s")

    async def traffic(self, stop: asyncio.Event, tick_s: float = 0.05) -> None:
        """Real-time behaviour: every tick, deliver the due events and reap results."""
        while not stop.is_set():
            self.pump(int(time.time() * 1000))
            self.reap()
            await asyncio.sleep(tick_s)

    # ------------------------------------------------------------ queries

    def on_version(self, version: str) -> int:
        """Devices whose active version and installed ``current`` are both ``version``."""
        count = 0
        for device in self.devices:
            current = device.agent.installer.current(TASK_NAME)
            count += device.active_version == version and current is not None and current.version == version
        return count
