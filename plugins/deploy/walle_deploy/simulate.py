"""A fleet simulator on loopback: one deploy server process, many asyncio device agents in
this process, real HTTP and push connections between them.

It publishes a task, releases it through the stages with automatic advancement and
measures, per device, the time from the opening of the device's stage to the device
reporting the bundle installed. It finishes with a tamper probe: a bundle corrupted in
the server's store after publishing must be rejected by the device and never installed.
The server runs in its own process so that it gets a core of its own, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from walle_deploy.agent import AgentConfig, DeviceAgent
from walle_deploy.bundle import pack_task
from walle_deploy.errors import DeployError
from walle_deploy.policy import first_stage, parse_stages
from walle_deploy.server.run import free_port
from walle_deploy.signing import TrustedKeys, generate_keypair, load_private_key

TASK = "fleet-demo"
PROBE_TASK = "tamper-probe"
REGIONS, OSES, MODELS = ("eu", "us", "ap"), ("android", "linux", "ios"), ("a1", "b2", "c3")
ENROLL_CONCURRENCY = 64
CONNECT_BATCH = 500
#: devices share HTTP clients in shards of this many connections each (see ``GatedTransport``)
HTTP_SHARDS = 32
HTTP_CONNECTIONS_PER_SHARD = 8


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its connection slot back when the response is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Any) -> None:
        self._inner, self._release = inner, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()


class GatedTransport(httpx.AsyncBaseTransport):
    """httpx's transport behind a semaphore with one slot per pooled connection.

    Profiling showed why: httpcore re-assigns its queue on every request start and end by
    checking every queued request against every connection, O(queue x connections) per
    event. With thousands of devices pulling at once the queue per client grows with the
    fleet, so the simulator's cost grew faster than linearly. Waiting here instead is an
    O(1) semaphore wake-up, and httpcore never holds more requests than connections."""

    def __init__(self, connections: int, inner: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(limits=limits)
        self._slots = asyncio.Semaphore(connections)
        self._connections, self._held = connections, 0

    @property
    def free_slots(self) -> int:
        """Slots not held by an open response (tests check that every path gives its slot back)."""
        return self._connections - self._held

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        self._held += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._held -= 1
                self._slots.release()

        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            release()
            raise
        if not isinstance(response.stream, httpx.AsyncByteStream):
            release()
            raise DeployError("[deploy] simulator: httpx transport returned a non-async body")
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_ReleasingStream(response.stream, release), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class SimulationConfig:
    devices: int = 1000
    push: str = "embedded"
    mqtt_url: str | None = None
    stages: str = "1,10,50,100"
    bundle_kib: int = 64
    seed: int = 0
    timeout_s: float = 300.0


def run_blocking(coro: Any) -> Any:
    """Run the simulator, on uvloop when it is installed (``walle-deploy[fast]``): the fleet is
    thousands of sockets in one process and the event loop is most of its cost."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return round(ordered[int(rank) - 1], 3)


def write_task(root: Path, name: str, version: str, payload_bytes: int, seed: int) -> Path:
    task_dir = root / f"{name}-{version}"
    task_dir.mkdir(parents=True)
    (task_dir / "task.toml").write_text(f'name = "{name}"\nversion = "{version}"\nentry = "main.py"\n'
                                        'models = ["model.bin"]\n')
    (task_dir / "main.py").write_text("def run(inputs):\n    return inputs\n")
    (task_dir / "model.bin").write_bytes(random.Random(seed).randbytes(payload_bytes))
    return task_dir


@contextlib.contextmanager
def mosquitto(port: int, workdir: Path) -> Iterator[str]:
    """Run a private mosquitto broker on 127.0.0.1:port; yields its URL."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        raise DeployError("[deploy] mosquitto is not installed (apt-get install mosquitto)")
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DeployError("[deploy] mosquitto did not start")
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def server_process(data: Path, port: int, admin: str, enroll: str, pub: Path, push: str,
                         mqtt_url: str | None) -> AsyncIterator[str]:
    """``python -m walle_deploy server`` as a child process; yields its base URL once healthy."""
    args = [sys.executable, "-m", "walle_deploy", "server", "--data", str(data), "--port", str(port),
            "--trusted-key", str(pub), "--push", push]
    if mqtt_url:
        args += ["--mqtt", mqtt_url]
    # the child imports exactly what this process imports (editable installs, a source checkout)
    env = {**os.environ, "WALLE_DEPLOY_TOKEN": admin, "WALLE_DEPLOY_ENROLL_TOKEN": enroll,
           "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    log_fd = os.open(data.parent / "server.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=log_fd, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                if proc.returncode is not None:
                    raise DeployError(f"[deploy] simulator server exited: {(data.parent / 'server.log').read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/v1/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise DeployError("[deploy] simulator server did not become healthy")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        os.close(log_fd)


def device_attrs(i: int, rng: random.Random) -> dict[str, str]:
    return {"region": REGIONS[i % 3], "os": OSES[rng.randrange(3)], "model": MODELS[rng.randrange(3)],
            "app": f"2.{rng.randrange(0, 12)}.{rng.randrange(0, 5)}", "group": "fleet"}


class Fleet:
    """The simulated devices and what happened to them."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def on_event(self, kind: str, info: dict[str, Any]) -> None:
        if kind in ("installed", "failed"):
            self.events.setdefault((info["task"], kind), {})[info["device"]] = info

    def count(self, task: str, kind: str) -> int:
        return len(self.events.get((task, kind), {}))


async def run_simulation(config: SimulationConfig) -> dict[str, Any]:
    # thousands of small device directories: keep them in RAM when the machine offers a tmpfs
    ram = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="walle-sim-", dir=ram) as tmp:
        root = Path(tmp)
        with contextlib.ExitStack() as stack:
            push_url = config.mqtt_url
            if config.push == "mqtt" and push_url is None:
                push_url = stack.enter_context(mosquitto(free_port(), root))
            return await _simulate(config, root, push_url)


async def _simulate(config: SimulationConfig, root: Path, mqtt_url: str | None) -> dict[str, Any]:
    _raise_fd_limit(config.devices)
    started = time.time()
    key_path, pub_path = generate_keypair(root / "keys")
    key = load_private_key(key_path)
    admin, enroll = "admin-" + os.urandom(8).hex(), "enroll-" + os.urandom(8).hex()
    stages = parse_stages(config.stages)
    (root / "server").mkdir()
    async with server_process(root / "server", free_port(), admin, enroll, pub_path, config.push, mqtt_url) as base, \
            contextlib.AsyncExitStack() as clients:
        shards = [await clients.enter_async_context(httpx.AsyncClient(
                      timeout=60, transport=GatedTransport(HTTP_CONNECTIONS_PER_SHARD)))
                  for _ in range(HTTP_SHARDS)]
        http = shards[0]
        admin_headers = {"Authorization": f"Bearer {admin}"}

        async def call(method: str, path: str, **kw: Any) -> Any:
            r = await http.request(method, f"{base}{path}", headers=admin_headers, **kw)
            if r.status_code >= 400:
                raise DeployError(f"[deploy] simulator: {method} {path}: HTTP {r.status_code} {r.text}")
            return r.json()

        idle = await call("GET", "/v1/admin/metrics")
        fleet, rng = Fleet(), random.Random(config.seed)
        keys = TrustedKeys.from_files([pub_path])
        agents = [DeviceAgent(AgentConfig(server=base, device_id=f"dev-{i:06d}", state_dir=root / "dev" / str(i),
                                          attrs=device_attrs(i, rng), enroll_token=enroll, trusted_keys=keys,
                                          push=config.push, mqtt_url=mqtt_url, heartbeat_s=600,
                                          backoff_initial_s=0.2, backoff_max_s=5),
                              http=shards[i % HTTP_SHARDS], on_event=fleet.on_event)
                  for i in range(config.devices)]
        gate = asyncio.Semaphore(ENROLL_CONCURRENCY)

        async def enroll_one(agent: DeviceAgent) -> None:
            async with gate:
                await agent.ensure_enrolled()

        await asyncio.gather(*(enroll_one(a) for a in agents))
        runners = []
        for start in range(0, len(agents), CONNECT_BATCH):
            runners += [asyncio.create_task(a.run()) for a in agents[start:start + CONNECT_BATCH]]
            await asyncio.gather(*(a.connected.wait() for a in agents[start:start + CONNECT_BATCH]))
        connected = await call("GET", "/v1/admin/metrics")
        # the connected fleet is millions of long-lived objects; without this every full
        # collection during the release walks all of them, a cost that grows with the fleet
        gc.freeze()
        try:
            report = await _release_and_measure(config, root, key, call, fleet, agents, stages)
        finally:
            gc.unfreeze()
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            await asyncio.gather(*(a.close() for a in agents))
        final = report.pop("metrics")

    per_device = (connected["rss_bytes"] - idle["rss_bytes"]) / max(1, config.devices)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "devices": config.devices, **report, "push": config.push,
        "bytes_served": final["bytes_served"],
        "server": {"rss_mib": round(final["rss_bytes"] / 2**20, 1), "kib_per_device": round(per_device / 1024, 1),
                   "cpu_s": final["cpu_s"]},
        "simulator_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "reconnects": sum(a.reconnects for a in agents),
        "wall_s": round(time.time() - started, 2),
    }


async def _release_and_measure(config: SimulationConfig, root: Path, key: Any, call: Any, fleet: Fleet,
                               agents: list[DeviceAgent], stages: Any) -> dict[str, Any]:
    packed = pack_task(write_task(root / "tasks", TASK, "1.0.0", config.bundle_kib * 1024, config.seed),
                       key, root / "out")
    await call("POST", "/v1/admin/bundles", content=packed.path.read_bytes())
    await call("POST", "/v1/admin/releases", json={"task": TASK, "version": "1.0.0", "stages": config.stages,
                                                   "advance_at": 1.0, "min_reports": 10})
    deadline = time.monotonic() + config.timeout_s
    while fleet.count(TASK, "installed") + fleet.count(TASK, "failed") < len(agents) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    status = await call("GET", f"/v1/admin/tasks/{TASK}/status")
    # the devices' last reports may still be in flight to the server: let the release settle
    settle = time.monotonic() + 5.0
    while status["releases"][0]["state"] == "active" and time.monotonic() < settle:
        await asyncio.sleep(0.05)
        status = await call("GET", f"/v1/admin/tasks/{TASK}/status")
    stage_started = [s["started"] for s in status["releases"][0]["stages"]]
    delivery, full_stage = [], []
    for agent in agents:
        event = fleet.events.get((TASK, "installed"), {}).get(agent.config.device_id)
        stage = first_stage(stages, TASK, agent.config.device_id, agent.config.attrs)
        if event is None or stage is None or stage_started[stage] is None:
            continue
        delivery.append(event["t"] - stage_started[stage])
        if stage == len(stages) - 1:
            full_stage.append(event["t"] - stage_started[stage])

    tampered = await _tamper_probe(root, key, call, fleet, agents[0])
    return {
        "installed": fleet.count(TASK, "installed"), "failed": fleet.count(TASK, "failed"),
        "delivery_s": {"p50": percentile(delivery, 50), "p99": percentile(delivery, 99),
                       "max": percentile(delivery, 100)},
        "full_stage_delivery_s": {"devices": len(full_stage), "p50": percentile(full_stage, 50),
                                  "p99": percentile(full_stage, 99)},
        "stages": [{k: s[k] for k in ("name", "targeted", "notified", "downloaded", "installed", "failed")}
                   for s in status["releases"][0]["stages"]],
        "release_state": status["releases"][0]["state"],
        "tampered_rejected": tampered,
        "metrics": await call("GET", "/v1/admin/metrics"),
    }


async def _tamper_probe(root: Path, key: Any, call: Any, fleet: Fleet, agent: DeviceAgent) -> bool:
    """Publish a bundle, corrupt it in the server's store (as a compromised CDN or disk would),
    release it to one device: the device must report failure and install nothing."""
    packed = pack_task(write_task(root / "tasks", PROBE_TASK, "1.0.0", 4096, 1), key, root / "out")
    published = await call("POST", "/v1/admin/bundles", content=packed.path.read_bytes())
    stored = root / "server" / "bundles" / published["digest"][:2] / f"{published['digest']}.tar"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    await call("POST", "/v1/admin/releases", json={"task": PROBE_TASK, "version": "1.0.0",
                                                   "target": f"device={agent.config.device_id}", "stages": "100"})
    for _ in range(400):
        if fleet.count(PROBE_TASK, "failed") or fleet.count(PROBE_TASK, "installed"):
            break
        await asyncio.sleep(0.05)
    status = await call("GET", f"/v1/admin/tasks/{PROBE_TASK}/status")
    server_saw_failure = status["releases"][0]["stages"][0]["failed"] == 1
    return (fleet.count(PROBE_TASK, "failed") == 1 and fleet.count(PROBE_TASK, "installed") == 0
            and agent.installer.current(PROBE_TASK) is None and server_saw_failure)


def _raise_fd_limit(devices: int) -> None:
    """Each simulated device holds a push socket; lift the soft fd limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 3 * devices + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
