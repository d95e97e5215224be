"""The demo's script: the whole device-cloud loop on one machine, in one asyncio program.

1. Start the deploy server in-process on a free loopback port (SQLite, local bundle
   store, embedded WebSocket push, or a real MQTT broker with ``push_url``).
2. Build three versions of the example task (:mod:`.task_template`), sign and publish them.
3. Start the fleet (:mod:`.fleet`): every device's user starts producing behaviour events.
4. Release v1 through the stages 10 / 50 / 100 %: devices pull, verify, install, health-check
   and start it; its trigger fires and the container runs the model on every firing.
5. Release v2 (new weights) mid-demo and wait for it to reach the whole fleet.
6. Release v3, whose entry raises: its first devices fail the health check, the server
   aborts the release, the demo rolls it back and the fleet is back on v2.
7. Let the behaviour stream run to the end of ``duration_s``, drain the container, report.
   Throughout, every device sends its per-version results (inferences, errors, latency,
   backend) to the server every couple of seconds and once more at the end; the summary's
   ``server_results`` is what the server aggregated, checked against the devices' own count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from walle_deploy.demo.fleet import Fleet
from walle_deploy.demo.task_template import TASK_NAME, TaskVersion, write_task
from walle_deploy.errors import DeployError

V1, V2, V3 = TaskVersion("1.0.0", seed=1), TaskVersion("2.0.0", seed=2), TaskVersion("3.0.0", seed=3, broken=True)
STAGES = "10,50,100"
#: share of the duration after which v2 and then the broken v3 are released
V2_AT, V3_AT = 0.35, 0.6
#: how long one rollout step may take before the demo records it as an error and goes on
STEP_TIMEOUT_S = 30.0
POLL_S = 0.1


@dataclass
class DemoConfig:
    devices: int = 24
    duration_s: float = 20.0
    #: ``mqtt://host:port`` of a broker to push through; None for the embedded WebSocket hub
    push_url: str | None = None
    seed: int = 0
    workers: int = 2


@dataclass
class DemoState:
    """What the live view shows; the scenario updates it as it goes."""

    config: DemoConfig
    fleet: Fleet | None = None
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    releases: list[dict[str, Any]] = field(default_factory=list)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=32))
    errors: list[str] = field(default_factory=list)
    abort_rollback_observed: bool = False
    #: the server's per-version aggregate of the devices' results reports
    server_results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def note(self, message: str) -> None:
        self.log.append(f"{self.elapsed_s:5.1f}s  {message}")


Refresh = Callable[[DemoState], None]


async def run_demo(config: DemoConfig, refresh: Refresh = lambda state: None) -> dict[str, Any]:
    """Run the whole scenario; ``refresh`` is called with the state a few times a second.
    Returns the summary (see :func:`summarize`)."""
    if config.devices < 1 or config.duration_s <= 0:
        raise DeployError("[demo] --devices must be >= 1 and --duration > 0")
    # the devices' state directories are many small files: keep them in RAM when possible
    ram = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    state = DemoState(config)
    with tempfile.TemporaryDirectory(prefix="walle-demo-", dir=ram) as tmp:
        await _run(config, Path(tmp), state, refresh)
    return summarize(state)


async def _run(config: DemoConfig, root: Path, state: DemoState, refresh: Refresh) -> None:
    from walle_core.container import Container
    from walle_deploy.bundle import pack_task
    from walle_deploy.cli import make_channel
    from walle_deploy.server.app import ServerConfig
    from walle_deploy.server.run import free_port, serving
    from walle_deploy.signing import TrustedKeys, generate_keypair, load_private_key

    key_path, pub_path = generate_keypair(root / "keys")
    key, keys = load_private_key(key_path), TrustedKeys.from_files([pub_path])
    admin, enroll = "admin-" + os.urandom(12).hex(), "enroll-" + os.urandom(12).hex()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    push = "mqtt" if config.push_url else "embedded"
    # a private topic prefix: retained manifests of an earlier run on the same broker must not leak in
    prefix = f"walle-demo-{os.urandom(4).hex()}"
    server_config = ServerConfig(data_dir=root / "server", admin_token=admin, enroll_token=enroll,
                                 trusted_keys=keys, public_url=base,
                                 push=make_channel(push, config.push_url or "", prefix))
    state.note(f"server on {base} (push: {config.push_url or 'embedded WebSocket'})")
    async with serving(server_config, "127.0.0.1", port), httpx.AsyncClient(timeout=30) as http:
        admin_api = AdminApi(http, base, admin)
        for spec in (V1, V2, V3):
            packed = pack_task(write_task(root / "tasks", spec), key, root / "bundles")
            await admin_api.call("POST", "/v1/admin/bundles", content=packed.path.read_bytes())
        state.note(f"built, signed and published {TASK_NAME} {V1.version}, {V2.version}, {V3.version} (broken)")
        with Container(workers=config.workers, state_dir=root / "container", queue_size=256) as container:
            fleet = Fleet(config.devices, base, root / "devices", container, enroll, keys,
                          good_versions=frozenset({V1.version, V2.version}), push=push,
                          mqtt_url=config.push_url, mqtt_prefix=prefix, seed=config.seed)
            state.fleet = fleet
            state.phase = f"enrolling {config.devices} devices"
            refresh(state)
            await fleet.start()
            state.note(f"{config.devices} devices enrolled and connected")
            stop = asyncio.Event()
            traffic = asyncio.create_task(fleet.traffic(stop))
            reporter = asyncio.create_task(fleet.results_loop(stop))
            watcher = asyncio.create_task(_watch(admin_api, state, refresh))
            try:
                await _script(config, admin_api, fleet, state)
            finally:
                stop.set()
                await traffic
                state.phase = "draining the container"
                await fleet.drain()
                await reporter
                state.phase = "sending the final results"
                unsent = await fleet.report_results()
                if unsent:
                    state.errors.append(f"{unsent} final results reports were not stored by the server")
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await _refresh_releases(admin_api, state)
                _check_server_results(state)
                await fleet.close()
            state.phase = "done"
            refresh(state)


async def _script(config: DemoConfig, api: AdminApi, fleet: Fleet, state: DemoState) -> None:
    """The release timeline; every wait is bounded and a miss is recorded, never hangs."""
    n = config.devices
    for spec, at in ((V1, 0.0), (V2, V2_AT)):
        await _until(lambda at=at: state.elapsed_s >= at * config.duration_s, config.duration_s)
        state.phase = f"rolling out {spec.version} ({STAGES} %)"
        await api.release(spec.version, abort_rate=0.2, min_reports=max(2, n // 10))
        state.note(f"released {spec.version} through stages {STAGES} %")
        if await _until(lambda v=spec.version: fleet.on_version(v) == n, STEP_TIMEOUT_S):
            state.note(f"{spec.version} runs on all {n} devices")
        else:
            state.errors.append(f"{spec.version} reached {fleet.on_version(spec.version)}/{n} devices "
                                f"within {STEP_TIMEOUT_S:.0f} s")

    await _until(lambda: state.elapsed_s >= V3_AT * config.duration_s, config.duration_s)
    state.phase = f"rolling out {V3.version} (broken entry)"
    await api.release(V3.version, abort_rate=0.2, min_reports=2)
    state.note(f"released {V3.version}: its entry raises")
    aborted = await _until_async(lambda: api.release_state(V3.version, "aborted"), STEP_TIMEOUT_S)
    if aborted:
        release = await api.latest_release()
        state.note(f"server aborted {V3.version}: {release.get('reason')}")
        state.phase = f"rolling back {V3.version}"
        await api.call("POST", f"/v1/admin/tasks/{TASK_NAME}/rollback")
        state.note(f"rolled back {V3.version}; devices fall back to {V2.version}")
    else:
        state.errors.append(f"release {V3.version} was not aborted within {STEP_TIMEOUT_S:.0f} s")
    # rollback observed = the server withdrew v3 and every device runs v2 again, none v3
    back = await _until(lambda: fleet.on_version(V2.version) == n, STEP_TIMEOUT_S)
    rolled_back = await api.release_state(V3.version, "rolled_back")
    state.abort_rollback_observed = bool(aborted and rolled_back and back)
    if not back:
        state.errors.append(f"after the rollback {fleet.on_version(V2.version)}/{n} devices run {V2.version}")

    state.phase = "streaming"
    await _until(lambda: state.elapsed_s >= config.duration_s, config.duration_s)


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _until_async(condition: Callable[[], Any], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _watch(api: AdminApi, state: DemoState, refresh: Refresh) -> None:
    """Poll the server's rollout status for the view, a few times a second."""
    while True:
        with contextlib.suppress(httpx.HTTPError, DeployError):
            await _refresh_releases(api, state)
        refresh(state)
        await asyncio.sleep(0.25)


async def _refresh_releases(api: AdminApi, state: DemoState) -> None:
    status = await api.call("GET", f"/v1/admin/tasks/{TASK_NAME}/status")
    state.releases = sorted(status["releases"], key=lambda r: r["release"])
    state.server_results = status.get("results", {})


def _check_server_results(state: DemoState) -> None:
    """The loop is closed only if what the server holds is what the devices did."""
    if state.fleet is None:
        return
    on_server = sum(r["inferences"] for r in state.server_results.values())
    on_devices = state.fleet.stats.inferences
    if on_server != on_devices:
        state.errors.append(f"the server received results for {on_server} inferences, the devices ran {on_devices}")


class AdminApi:
    """The few admin calls the demo makes, over the server's public HTTP API."""

    def __init__(self, http: httpx.AsyncClient, base: str, token: str) -> None:
        self.http, self.base = http, base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.http.request(method, f"{self.base}{path}", headers=self.headers, **kw)
        if r.status_code >= 400:
            raise DeployError(f"[demo] {method} {path}: HTTP {r.status_code} {r.text}")
        return r.json()

    async def release(self, version: str, abort_rate: float, min_reports: int) -> None:
        # advance_at = 1.0: a stage opens only when every device of the previous one reported,
        # so the view shows the stages one after the other
        await self.call("POST", "/v1/admin/releases", json={
            "task": TASK_NAME, "version": version, "stages": STAGES, "advance_at": 1.0,
            "abort_failure_rate": abort_rate, "min_reports": min_reports})

    async def latest_release(self) -> dict[str, Any]:
        status = await self.call("GET", f"/v1/admin/tasks/{TASK_NAME}/status")
        return max(status["releases"], key=lambda r: r["release"])

    async def release_state(self, version: str, wanted: str) -> bool:
        status = await self.call("GET", f"/v1/admin/tasks/{TASK_NAME}/status")
        return any(r["version"] == version and r["state"] == wanted for r in status["releases"])


def summarize(state: DemoState) -> dict[str, Any]:
    """The machine-readable summary (``walle demo --json``)."""
    fleet = state.fleet
    stats = fleet.stats if fleet is not None else None
    errors = list(state.errors) + (list(stats.errors) if stats is not None else [])
    devices = state.config.devices
    updated = 0
    if fleet is not None:
        updated = sum(V1.version in d.versions_seen and d.active_version == V2.version for d in fleet.devices)
    backend = stats.backends.most_common(1)[0][0] if stats is not None and stats.backends else None
    return {
        "devices": devices,
        "updated": updated,
        "events": stats.events if stats else 0,
        "triggers_fired": stats.triggers_fired if stats else 0,
        "inferences": stats.inferences if stats else 0,
        "inferences_by_version": dict(stats.inferences_by_version) if stats else {},
        "offers": stats.offers if stats else 0,
        "shed": stats.shed if stats else 0,
        "latency_ms": {"p50": stats.percentile(50) if stats else None,
                       "p99": stats.percentile(99) if stats else None},
        "backend": backend,
        "backends": dict(stats.backends) if stats else {},
        "health_checks_failed": dict(stats.health_checks_failed) if stats else {},
        "abort_rollback_observed": state.abort_rollback_observed,
        "server_results": state.server_results,
        "releases": [{"release": r["release"], "version": r["version"], "state": r["state"],
                      "reason": r["reason"],
                      "stages": [{k: s[k] for k in ("name", "targeted", "installed", "failed")} for s in r["stages"]]}
                     for r in state.releases],
        "timeline": list(state.log),
        "wall_s": round(state.elapsed_s, 2),
        "errors": errors,
    }


def succeeded(summary: dict[str, Any]) -> bool:
    """The demo's acceptance: every device updated, triggers fired, inferences ran, the
    abort + rollback was observed, and nothing went wrong."""
    return (summary["updated"] == summary["devices"] and summary["triggers_fired"] > 0
            and summary["inferences"] > 0 and summary["abort_rollback_observed"] and not summary["errors"])
