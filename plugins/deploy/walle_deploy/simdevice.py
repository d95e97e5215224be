"""Simulated devices for ``walle deploy simulate``, and the worker process that runs a share
of the fleet (``python -m walle_deploy.simdevice``, driven by :mod:`walle_deploy.simulate`).

A :class:`SimDevice` speaks the device protocol exactly as :class:`~walle_deploy.agent.DeviceAgent`
does — enrollment, the push connection (embedded WebSocket or MQTT manifests evaluated with the
agent's own :func:`~walle_deploy.agent.manifest_choices`), jitter, the authenticated pull, the
digest check, signature and per-file hash verification and the atomic install through
:class:`~walle_deploy.install.TaskInstaller`, then one ``installed`` report (which implies
``downloaded``) or a ``failed`` one with the reason. It differs in what only matters when
thousands of devices share one CPU: the network clients are the minimal ones of
:mod:`walle_deploy.simnet`, the pulled bundle is verified from memory instead of a ``.part``
file (nothing here is ever interrupted, so there is nothing to resume), devices share a few
keep-alive HTTP connections, and verification runs on the event loop rather than in a
thread (no hop, no GIL hand-over). Every device still verifies the bytes it downloaded itself.

Worker protocol, JSON lines: the coordinator writes one spec line to stdin, the worker
answers ``{"connected": n, "cpu_s": ..}`` once its devices are enrolled and connected, then
streams ``{"events": [[task, kind, device, t], ..], "cpu_s": ..}`` until it reads ``stop``,
and ends with ``{"done": true, ...}``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from walle_deploy.agent import REPORT_ATTEMPTS, manifest_choices
from walle_deploy.errors import BundleError, DeployError, TaskError
from walle_deploy.install import TaskInstaller
from walle_deploy.notices import NoticeWorkers, parse_notice
from walle_deploy.push.mqtt import parse_mqtt_url, topic_for
from walle_deploy.signing import TrustedKeys, load_public_key
from walle_deploy.simnet import HttpPool, SimNetError, WebSocketClient, open_mqtt, open_websocket

log = logging.getLogger("walle_deploy.simdevice")
EVENT_FLUSH_S = 0.05
REGIONS, OSES, MODELS = ("eu", "us", "ap"), ("android", "linux", "ios"), ("a1", "b2", "c3")
#: a simulated device the coordinator and the workers agree on without talking: its attributes
#: come from a generator seeded with (seed, index) alone
Emit = Callable[[str, str, str], None]


def device_id(index: int) -> str:
    return f"dev-{index:06d}"


def device_attrs(index: int, seed: int) -> dict[str, str]:
    rng = random.Random(f"{seed}:{index}")
    return {"region": REGIONS[index % 3], "os": OSES[rng.randrange(3)], "model": MODELS[rng.randrange(3)],
            "app": f"2.{rng.randrange(0, 12)}.{rng.randrange(0, 5)}", "group": "fleet"}


class SimDevice:
    """One simulated device (see the module docstring for how it differs from the agent)."""

    def __init__(self, index: int, seed: int, base: str, state_dir: Path, pool: HttpPool, keys: TrustedKeys,
                 emit: Emit, push: str = "embedded", mqtt_url: str | None = None, mqtt_prefix: str = "walle") -> None:
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            raise DeployError(f"[simulate] server URL {base!r} must be http://HOST:PORT")
        self.id = device_id(index)
        self.attrs = device_attrs(index, seed)
        self.base, self.host, self.port = base.rstrip("/"), parts.hostname, parts.port or 80
        self.pool, self.keys, self.emit = pool, keys, emit
        self.push, self.mqtt_url, self.mqtt_prefix = push, mqtt_url, mqtt_prefix
        self.installer = TaskInstaller(state_dir / "tasks")
        self.auth: dict[str, str] = {}
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._ws: WebSocketClient | None = None
        self._rng = random.Random(self.id)
        self._notices = NoticeWorkers(self.process, self._on_process_error)
        self._manifests: dict[str, list[dict[str, Any]]] = {}
        self._current: dict[str, str | None] = {}

    # ------------------------------------------------------------ enrollment and push

    async def enroll(self, enroll_token: str) -> None:
        body = json.dumps({"device_id": self.id, "attrs": self.attrs}).encode()
        r = await self.pool.request("POST", "/v1/enroll", {"Authorization": f"Bearer {enroll_token}"}, body)
        if r.status != 201:
            raise DeployError(f"[simulate] enrollment of {self.id} failed: HTTP {r.status} {r.body[:200]!r}")
        self.auth = {"Authorization": f"Bearer {json.loads(r.body)['token']}"}

    async def run(self) -> None:
        """Hold the push connection, reconnecting with jittered exponential backoff."""
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                if self.push == "embedded":
                    self._ws = await open_websocket(self.host, self.port, "/v1/push", self.auth, self._on_message)
                    self.connected.set()
                    await self._ws.closed
                else:
                    await self._run_mqtt()
            except (OSError, asyncio.TimeoutError, DeployError) as exc:
                log.info("[simulate] %s: push connection ended: %s", self.id, exc)
            self._ws = None
            self.connected.clear()
            self.reconnects += 1
            if time.monotonic() - started > 2 * backoff:
                backoff = 0.2
            await asyncio.sleep(self._rng.uniform(0, backoff))
            backoff = min(backoff * 2, 5.0)

    async def _run_mqtt(self) -> None:
        assert self.mqtt_url is not None
        host, port = parse_mqtt_url(self.mqtt_url)
        topics = [topic_for(self.mqtt_prefix, "all"), topic_for(self.mqtt_prefix, self.attrs["group"])]
        client = await open_mqtt(host, port, f"walle-{self.id}", topics, self._on_publish)
        self.connected.set()
        try:
            await client.closed
        finally:
            client.close()

    def _on_publish(self, topic: str, payload: bytes) -> None:
        """A retained manifest, read as ``MqttSubscription`` reads it: empty means none."""
        if not payload:
            self._on_manifest(topic, [])
            return
        try:
            entries = json.loads(payload)["releases"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(entries, list):
            self._on_manifest(topic, entries)

    def _on_message(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "notice":
            self.submit(message)

    def _on_manifest(self, topic: str, entries: list[dict[str, Any]]) -> None:
        self._manifests[topic] = entries
        for entry in manifest_choices(self._manifests, self.id, self.attrs, self._current_digest):
            if self._current_digest(entry["task"]) != entry.get("digest") \
                    and self._notices.inflight_digest(entry["task"]) != entry.get("digest"):
                self.submit(entry)

    def _current_digest(self, task: str) -> str | None:
        # only this object installs into its state directory, so the answer read from disk
        # once stays true until this object installs again (the real agent reads it each time)
        if task not in self._current:
            current = self.installer.current(task)
            self._current[task] = None if current is None else current.digest
        return self._current[task]

    # ------------------------------------------------------------ pull, verify, install, report

    def submit(self, notice: dict[str, Any]) -> None:
        """Queue a notice (see ``NoticeWorkers``: the newest per task, one at a time)."""
        self._notices.submit(notice)

    async def _on_process_error(self, task: str, notice: dict[str, Any], exc: Exception) -> None:
        log.exception("[simulate] %s: processing %s failed", self.id, task)
        self.emit(task, "failed", self.id)
        if type(notice.get("release")) is int:
            await self.report(notice["release"], "failed", f"simulator error: {exc}")

    async def process(self, notice: dict[str, Any]) -> None:
        try:
            task, version, digest, url, release = parse_notice(notice)
            if not url.startswith(self.base + "/"):
                raise TaskError("bad digest, url or release")
        except (KeyError, TaskError) as exc:
            log.warning("[simulate] %s ignores a malformed notice: %s", self.id, exc)
            return
        if self._current_digest(task) == digest:
            await self.report(release, "installed")
            return
        try:
            self._current.pop(task, None)
            if self.installer.has(task, version, digest):
                self.installer.switch(task, version, digest)
            else:
                delay = self._rng.uniform(0, float(notice.get("jitter_s") or 0))
                delay += self._rng.uniform(0, float(notice.get("spread_s") or 0))
                if delay > 0:
                    await asyncio.sleep(delay)
                body = await self._pull(url[len(self.base):], digest)
                self.installer.install(io.BytesIO(body), self.keys, task, version, digest)
            self._current[task] = digest
        except (DeployError, OSError) as exc:
            self.emit(task, "failed", self.id)
            await self.report(release, "failed", str(exc))
            return
        self.emit(task, "installed", self.id)
        await self.report(release, "installed")

    async def _pull(self, path: str, digest: str) -> bytes:
        for attempt in range(4):
            try:
                r = await self.pool.request("GET", path, self.auth)
            except SimNetError as exc:
                if attempt == 3:
                    raise DeployError(f"[simulate] download of {digest[:12]} failed: {exc}") from exc
                await asyncio.sleep(self._rng.uniform(0.1, 0.5) * 2 ** attempt)
                continue
            if r.status != 200:
                raise DeployError(f"[simulate] download refused: HTTP {r.status} {r.body[:200]!r}")
            actual = hashlib.sha256(r.body).hexdigest()
            if actual != digest:
                raise BundleError(f"[simulate] downloaded bundle has SHA-256 {actual[:12]}, notice says "
                                  f"{digest[:12]}: truncated or tampered")
            return r.body
        raise AssertionError("unreachable")

    async def report(self, release: int, state: str, reason: str = "") -> None:
        """Over the push socket when it is up, else HTTP with retries (MQTT devices always)."""
        message = json.dumps({"type": "report", "release": release, "state": state, "reason": reason},
                             separators=(",", ":")).encode()
        if self._ws is not None and self._ws.send_text(message):
            return
        for attempt in range(REPORT_ATTEMPTS):
            try:
                r = await self.pool.request("POST", "/v1/device/report", self.auth, message)
                if r.status < 500:
                    return
            except SimNetError:
                pass
            await asyncio.sleep(self._rng.uniform(0.5, 1.5) * 2 ** attempt)
        log.warning("[simulate] %s: report %s for release %d dropped", self.id, state, release)

    async def close(self) -> None:
        await self._notices.close()
        if self._ws is not None:
            self._ws.close()


# ---------------------------------------------------------------- worker process


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)


def _write(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def run_worker(spec: dict[str, Any], commands: asyncio.StreamReader) -> None:
    """Enroll and connect this worker's devices, stream their events, stop on command."""
    base, seed = spec["base"], int(spec["seed"])
    parts = urlsplit(base)
    pool = HttpPool(parts.hostname or "127.0.0.1", parts.port or 80, int(spec["http_connections"]))
    keys = TrustedKeys([load_public_key(spec["trusted_key"].encode(), "simulator trusted key")])
    events: list[list[Any]] = []
    state_root = Path(spec["state_root"])

    def emit(task: str, kind: str, dev: str) -> None:
        events.append([task, kind, dev, time.time()])

    devices = [SimDevice(i, seed, base, state_root / str(i), pool, keys, emit, spec["push"], spec.get("mqtt_url"))
               for i in spec["indices"]]
    gate = asyncio.Semaphore(int(spec["enroll_concurrency"]))

    async def enroll(device: SimDevice) -> None:
        async with gate:
            await device.enroll(spec["enroll_token"])

    await asyncio.gather(*(enroll(d) for d in devices))
    runners: list[asyncio.Task[None]] = []
    batch = int(spec["connect_batch"])
    for start in range(0, len(devices), batch):
        runners += [asyncio.create_task(d.run()) for d in devices[start:start + batch]]
        await asyncio.gather(*(d.connected.wait() for d in devices[start:start + batch]))
    # the connected fleet is long-lived objects only: without this every full collection
    # during the release walks all of them, a cost that grows with the fleet
    gc.collect()
    gc.freeze()
    _write({"connected": len(devices), "cpu_s": cpu_seconds()})

    async def flush_events() -> None:
        while True:
            await asyncio.sleep(EVENT_FLUSH_S)
            if events:
                batch_out = events[:]
                events.clear()
                _write({"events": batch_out, "cpu_s": cpu_seconds()})

    flusher = asyncio.create_task(flush_events())
    while (line := await commands.readline()) and line.strip() != b"stop":
        pass
    flusher.cancel()
    for runner in runners:
        runner.cancel()
    await asyncio.gather(flusher, *runners, return_exceptions=True)
    await asyncio.gather(*(d.close() for d in devices))
    pool.close()
    if events:
        _write({"events": events, "cpu_s": cpu_seconds()})
    _write({"done": True, "cpu_s": cpu_seconds(), "reconnects": sum(d.reconnects for d in devices),
            "http_requests": pool.requests})


async def _worker_main() -> None:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    line = await commands.readline()
    if not line:
        raise DeployError("[simulate] worker got no spec on stdin")
    await run_worker(json.loads(line), commands)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Any], Any] = asyncio.run
    else:
        runner = uvloop.run
    profile_dir = os.environ.get("WALLE_SIM_PROFILE")
    if not profile_dir:
        runner(_worker_main())
        return
    # WALLE_SIM_PROFILE=DIR: a cProfile of each worker, written to DIR/worker-<pid>.prof
    import cProfile

    with cProfile.Profile() as profile:
        runner(_worker_main())
    profile.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))


if __name__ == "__main__":
    main()
