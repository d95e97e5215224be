"""A fleet simulator on loopback: one deploy server process, the fleet in worker processes,
real HTTP and push connections between them.

It publishes a task, releases it through the stages with automatic advancement (and the
rate limit and jitter given on the command line) and measures, per device, the time from
the opening of the device's stage to the device having verified and installed the bundle.
It finishes with a tamper probe: a bundle corrupted in the server's store after publishing
must be rejected by the device and never installed.

The server runs in its own process so that it gets a core of its own, as in production; the
simulated devices (:mod:`walle_deploy.simdevice`) are split over ``--workers`` processes,
each with its own event loop, so the simulator uses the other cores. This process only
coordinates: it starts everything, drives the admin API and merges the workers' events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from walle_deploy.bundle import pack_task
from walle_deploy.errors import DeployError
from walle_deploy.install import TaskInstaller
from walle_deploy.policy import first_stage, parse_stages
from walle_deploy.server.run import free_port
from walle_deploy.signing import generate_keypair, load_private_key
from walle_deploy.simdevice import device_attrs, device_id
from walle_deploy.simnet import HttpPool, SimNetError

TASK = "fleet-demo"
PROBE_TASK = "tamper-probe"
#: per worker: enrollments in flight, devices connecting at once, keep-alive HTTP connections
ENROLL_CONCURRENCY = 32
CONNECT_BATCH = 500
HTTP_CONNECTIONS = 64


@dataclass
class SimulationConfig:
    devices: int = 1000
    push: str = "embedded"
    mqtt_url: str | None = None
    stages: str = "1,10,50,100"
    bundle_kib: int = 64
    seed: int = 0
    timeout_s: float = 300.0
    #: the release policy's pacing: notices per second (0 = unlimited) and the random delay
    #: 0..jitter_s each device waits before it pulls
    rate: float = 0.0
    jitter_s: float = 0.0
    #: processes the simulated devices are spread over
    workers: int = 2
    http_connections: int = HTTP_CONNECTIONS

    def check(self) -> None:
        if self.devices < 1 or self.workers < 1 or self.http_connections < 1:
            raise DeployError("[simulate] devices, workers and http_connections must be >= 1")
        if self.rate < 0 or self.jitter_s < 0:
            raise DeployError("[simulate] rate and jitter must be >= 0")
        if self.push not in ("embedded", "mqtt"):
            raise DeployError(f"[simulate] unknown push channel {self.push!r} (embedded, mqtt)")


def run_blocking(coro: Any) -> Any:
    """Run a many-socket program (``walle demo``'s in-process fleet) on uvloop when it is
    installed (``walle-deploy[fast]``). The simulator's coordinator does not use it: it only
    drives child processes, and uvloop crashed now and then while collecting their pipe
    transports at exit; its workers, where the sockets are, do use it."""
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


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def mosquitto(port: int, workdir: Path, cpu: dict[str, float | None] | None = None) -> Iterator[str]:
    """Run a private mosquitto broker on 127.0.0.1:port; yields its URL. When ``cpu`` is
    given, ``cpu["broker_s"]`` is set to the broker's CPU seconds just before it stops."""
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
        if cpu is not None:
            cpu["broker_s"] = process_cpu_s(proc.pid)
        proc.terminate()
        proc.wait(timeout=10)


def _child_env(**extra: str) -> dict[str, str]:
    # the children import exactly what this process imports (editable installs, a source checkout)
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}


@contextlib.asynccontextmanager
async def server_process(data: Path, port: int, admin: str, enroll: str, pub: Path, push: str,
                         mqtt_url: str | None) -> AsyncIterator[str]:
    """``python -m walle_deploy server`` as a child process; yields its base URL once healthy."""
    args = [sys.executable, "-m", "walle_deploy", "server", "--data", str(data), "--port", str(port),
            "--trusted-key", str(pub), "--push", push, "--log-level", "warning"]
    if mqtt_url:
        args += ["--mqtt", mqtt_url]
    env = _child_env(WALLE_DEPLOY_TOKEN=admin, WALLE_DEPLOY_ENROLL_TOKEN=enroll)
    log_fd = os.open(data.parent / "server.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=log_fd, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    health = HttpPool("127.0.0.1", port, 1, timeout_s=5)
    try:
        for _ in range(300):
            if proc.returncode is not None:
                raise DeployError(f"[simulate] server exited: {(data.parent / 'server.log').read_text()}")
            with contextlib.suppress(SimNetError):
                if (await health.request("GET", "/v1/health")).status == 200:
                    break
            await asyncio.sleep(0.05)
        else:
            raise DeployError("[simulate] server did not become healthy")
        health.close()
        yield base
    finally:
        health.close()
        await _stop(proc, terminate=True)
        os.close(log_fd)


async def _stop(proc: asyncio.subprocess.Process, terminate: bool) -> None:
    if terminate and proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


class Fleet:
    """What happened to the simulated devices, merged from the workers' event streams."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, float]] = {}
        self.cpu_s: dict[int, float] = {}
        #: workers whose stream ended before they said "done" (they crashed or were killed)
        self.lost: list[int] = []

    def add(self, task: str, kind: str, device: str, t: float) -> None:
        if kind in ("installed", "failed"):
            self.events.setdefault((task, kind), {})[device] = t

    def count(self, task: str, kind: str) -> int:
        return len(self.events.get((task, kind), {}))

    def time_of(self, task: str, kind: str, device: str) -> float | None:
        return self.events.get((task, kind), {}).get(device)


class Worker:
    """One simulator worker process (``python -m walle_deploy.simdevice``) and its stream."""

    def __init__(self, number: int, proc: asyncio.subprocess.Process, fleet: Fleet) -> None:
        self.number, self.proc, self.fleet = number, proc, fleet
        self.connected = asyncio.get_running_loop().create_future()
        self.done: dict[str, Any] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "cpu_s" in message:
                self.fleet.cpu_s[self.number] = message["cpu_s"]
            if "connected" in message and not self.connected.done():
                self.connected.set_result(message)
            for task, kind, device, t in message.get("events", ()):
                self.fleet.add(task, kind, device, t)
            if message.get("done"):
                self.done = message
        if not self.done:
            self.fleet.lost.append(self.number)
        if not self.connected.done():
            self.connected.set_exception(DeployError(f"[simulate] worker {self.number} exited before connecting; "
                                                     "see worker-*.log"))

    async def stop(self) -> None:
        if self.proc.stdin is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
        await _stop(self.proc, terminate=False)
        await self.reader


@contextlib.asynccontextmanager
async def worker_processes(config: SimulationConfig, root: Path, base: str, enroll: str, pub: Path,
                           mqtt_url: str | None, fleet: Fleet) -> AsyncIterator[list[Worker]]:
    """Start the workers, device i going to worker i % workers; stop them all at the end."""
    workers: list[Worker] = []
    try:
        for number in range(min(config.workers, config.devices)):
            spec = {"base": base, "seed": config.seed, "enroll_token": enroll, "trusted_key": pub.read_text(),
                    "state_root": str(root / "dev"), "push": config.push, "mqtt_url": mqtt_url,
                    "indices": list(range(number, config.devices, config.workers)),
                    "http_connections": config.http_connections, "enroll_concurrency": ENROLL_CONCURRENCY,
                    "connect_batch": CONNECT_BATCH}
            log_fd = os.open(root / f"worker-{number}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "walle_deploy.simdevice", env=_child_env(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=log_fd, limit=1 << 24)
            finally:
                os.close(log_fd)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()
            workers.append(Worker(number, proc, fleet))
        yield workers
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


def worker_log(root: Path) -> str:
    return "".join(p.read_text()[-2000:] for p in sorted(root.glob("worker-*.log")))


async def run_simulation(config: SimulationConfig) -> dict[str, Any]:
    config.check()
    # thousands of small device directories: keep them in RAM when the machine offers a tmpfs
    ram = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="walle-sim-", dir=ram) as tmp:
        root = Path(tmp)
        broker: dict[str, float | None] = {}
        with contextlib.ExitStack() as stack:
            push_url = config.mqtt_url
            if config.push == "mqtt" and push_url is None:
                push_url = stack.enter_context(mosquitto(free_port(), root, broker))
            report = await _simulate(config, root, push_url)
        if broker:
            report["broker_cpu_s"] = broker["broker_s"]
        return report


async def _simulate(config: SimulationConfig, root: Path, mqtt_url: str | None) -> dict[str, Any]:
    _raise_fd_limit(config.devices)
    started = time.time()
    key_path, pub_path = generate_keypair(root / "keys")
    key = load_private_key(key_path)
    admin, enroll = "admin-" + os.urandom(8).hex(), "enroll-" + os.urandom(8).hex()
    stages = parse_stages(config.stages)
    (root / "server").mkdir()
    port = free_port()
    fleet = Fleet()
    async with server_process(root / "server", port, admin, enroll, pub_path, config.push, mqtt_url) as base:
        http = HttpPool("127.0.0.1", port, 2)
        admin_headers = {"Authorization": f"Bearer {admin}"}

        async def call(method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
            r = await http.request(method, path, admin_headers, data,
                                   "application/x-tar" if raw is not None else "application/json")
            if r.status >= 400:
                raise DeployError(f"[simulate] {method} {path}: HTTP {r.status} {r.body[:300]!r}")
            return json.loads(r.body)

        idle = await call("GET", "/v1/admin/metrics")
        async with worker_processes(config, root, base, enroll, pub_path, mqtt_url, fleet) as workers:
            try:
                await asyncio.wait_for(asyncio.gather(*(w.connected for w in workers)), config.timeout_s)
            except (asyncio.TimeoutError, DeployError) as exc:
                raise DeployError(f"[simulate] the fleet did not connect: {exc}\n{worker_log(root)}") from exc
            connected = await call("GET", "/v1/admin/metrics")
            report = await _release_and_measure(config, root, key, call, fleet, stages)
        http.close()
        final = report.pop("metrics")
        release_cpu = report.pop("release_cpu")
        release_cpu["server_s"] = round(release_cpu["server_s"] - connected["cpu_s"], 2)

    per_device = (connected["rss_bytes"] - idle["rss_bytes"]) / max(1, config.devices)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    workers_cpu = sum(w.done.get("cpu_s", fleet.cpu_s.get(w.number, 0.0)) for w in workers)
    return {
        "devices": config.devices, **report, "push": config.push,
        "policy": {"stages": config.stages, "rate": config.rate, "jitter_s": config.jitter_s,
                   "advance_at": 1.0},
        "workers": len(workers),
        "bytes_served": final["bytes_served"],
        "server": {"rss_mib": round(final["rss_bytes"] / 2**20, 1), "kib_per_device": round(per_device / 1024, 1),
                   "cpu_s": final["cpu_s"]},
        "simulator_cpu_s": round(usage.ru_utime + usage.ru_stime + workers_cpu, 2),
        "release_cpu_s": release_cpu,
        "reconnects": sum(int(w.done.get("reconnects", 0)) for w in workers),
        "wall_s": round(time.time() - started, 2),
    }


async def _release_and_measure(config: SimulationConfig, root: Path, key: Any, call: Any, fleet: Fleet,
                               stages: Any) -> dict[str, Any]:
    packed = pack_task(write_task(root / "tasks", TASK, "1.0.0", config.bundle_kib * 1024, config.seed),
                       key, root / "out")
    await call("POST", "/v1/admin/bundles", raw=packed.path.read_bytes())
    sim_cpu_before = sum(fleet.cpu_s.values())
    await call("POST", "/v1/admin/releases", {"task": TASK, "version": "1.0.0", "stages": config.stages,
                                              "advance_at": 1.0, "min_reports": 10, "rate": config.rate,
                                              "jitter_s": config.jitter_s})
    deadline = time.monotonic() + config.timeout_s
    while fleet.count(TASK, "installed") + fleet.count(TASK, "failed") < config.devices \
            and time.monotonic() < deadline:
        if fleet.lost:
            raise DeployError(f"[simulate] worker process {fleet.lost[0]} died during the release\n"
                              f"{worker_log(root)}")
        await asyncio.sleep(0.05)
    release_cpu = {"simulator_s": round(sum(fleet.cpu_s.values()) - sim_cpu_before, 2),
                   "server_s": (await call("GET", "/v1/admin/metrics"))["cpu_s"]}
    status = await call("GET", f"/v1/admin/tasks/{TASK}/status")
    # the devices' last reports may still be in flight to the server: let the release settle
    settle = time.monotonic() + 5.0
    while status["releases"][0]["state"] == "active" and time.monotonic() < settle:
        await asyncio.sleep(0.05)
        status = await call("GET", f"/v1/admin/tasks/{TASK}/status")
    stage_started = [s["started"] for s in status["releases"][0]["stages"]]
    delivery: list[float] = []
    per_stage: list[list[float]] = [[] for _ in stages]
    for i in range(config.devices):
        dev = device_id(i)
        t = fleet.time_of(TASK, "installed", dev)
        stage = first_stage(stages, TASK, dev, device_attrs(i, config.seed))
        if t is None or stage is None or stage_started[stage] is None:
            continue
        delivery.append(t - stage_started[stage])
        per_stage[stage].append(t - stage_started[stage])
    full_stage = per_stage[-1]

    tampered = await _tamper_probe(root, key, call, fleet)
    return {
        "installed": fleet.count(TASK, "installed"), "failed": fleet.count(TASK, "failed"),
        "delivery_s": {"p50": percentile(delivery, 50), "p99": percentile(delivery, 99),
                       "max": percentile(delivery, 100)},
        "full_stage_delivery_s": {"devices": len(full_stage), "p50": percentile(full_stage, 50),
                                  "p99": percentile(full_stage, 99)},
        "stages": [{**{k: s[k] for k in ("name", "targeted", "notified", "downloaded", "installed", "failed")},
                    "delivery_p50_s": percentile(times, 50), "delivery_p99_s": percentile(times, 99)}
                   for s, times in zip(status["releases"][0]["stages"], per_stage)],
        "release_state": status["releases"][0]["state"],
        "tampered_rejected": tampered,
        "release_cpu": release_cpu,
        "metrics": await call("GET", "/v1/admin/metrics"),
    }


async def _tamper_probe(root: Path, key: Any, call: Any, fleet: Fleet) -> bool:
    """Publish a bundle, corrupt it in the server's store (as a compromised CDN or disk would),
    release it to device 0: the device must report failure and install nothing."""
    packed = pack_task(write_task(root / "tasks", PROBE_TASK, "1.0.0", 4096, 1), key, root / "out")
    published = await call("POST", "/v1/admin/bundles", raw=packed.path.read_bytes())
    stored = root / "server" / "bundles" / published["digest"][:2] / f"{published['digest']}.tar"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    probe = device_id(0)
    await call("POST", "/v1/admin/releases", {"task": PROBE_TASK, "version": "1.0.0",
                                              "target": f"device={probe}", "stages": "100"})
    for _ in range(400):
        if fleet.count(PROBE_TASK, "failed") or fleet.count(PROBE_TASK, "installed"):
            break
        await asyncio.sleep(0.05)
    server_saw_failure = False
    for _ in range(100):  # the failure report travels separately from the worker's event
        status = await call("GET", f"/v1/admin/tasks/{PROBE_TASK}/status")
        server_saw_failure = status["releases"][0]["stages"][0]["failed"] == 1
        if server_saw_failure:
            break
        await asyncio.sleep(0.05)
    installed_nothing = TaskInstaller(root / "dev" / "0" / "tasks").current(PROBE_TASK) is None
    return (fleet.count(PROBE_TASK, "failed") == 1 and fleet.count(PROBE_TASK, "installed") == 0
            and installed_nothing and server_saw_failure)


def _raise_fd_limit(devices: int) -> None:
    """Each simulated device holds a push socket; lift the soft fd limit toward the hard one
    (the server and worker processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 3 * devices + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
