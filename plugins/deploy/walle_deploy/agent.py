"""The device agent: keep a push connection, pull + verify + install what the server
releases to this device, report every step.

One agent is one asyncio object with no threads of its own, so the fleet simulator runs
thousands in one process over real sockets; ``walle agent`` runs exactly one. Everything
that can fail on a device (network, a tampered bundle, a full disk) ends in a ``failed``
report with the reason, never in a half-installed task: installation goes through
:class:`~walle_deploy.install.TaskInstaller`, which switches versions atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx

from walle_deploy.errors import BundleError, DeployError, TaskError
from walle_deploy.install import TaskInstaller
from walle_deploy.notices import NoticeWorkers, parse_notice
from walle_deploy.policy import Stage, first_stage, parse_target
from walle_deploy.push.mqtt import MqttSubscription, topic_for
from walle_deploy.signing import TrustedKeys, load_public_key
from walle_deploy.task import check_name

log = logging.getLogger("walle_deploy.agent")
#: a hook the compute container will implement: called with the new ``current`` task
#: directory before ``installed`` is reported; returning True means the task started, which
#: is then reported as ``running``; raising :class:`TaskStartError` means it cannot start:
#: the previous version is switched back and ``failed`` is reported instead
InstallHook = Callable[[Path], Any]
DOWNLOAD_ATTEMPTS = 4
#: a report lost to an overloaded server would stall a stage that waits for it, so retry
REPORT_ATTEMPTS = 5
#: an install still verifying after this long gets its own "downloaded" report first
DOWNLOADED_REPORT_AFTER_S = 1.0


class DownloadError(DeployError):
    """A bundle could not be pulled (HTTP error, network failure after retries)."""


class TaskStartError(DeployError):
    """Raised by an ``on_installed`` hook when the new version installed but cannot start
    (its health check failed). The agent switches the previous version back in and reports
    ``failed`` with this message, which is what lets the server's abort rule see a broken
    release that verified and unpacked perfectly well."""


@dataclass
class AgentConfig:
    server: str
    device_id: str
    state_dir: Path
    attrs: dict[str, str] = field(default_factory=dict)
    enroll_token: str | None = None
    #: trusted publisher keys; empty means trust-on-first-use of the server's keys
    trusted_keys: TrustedKeys = field(default_factory=TrustedKeys)
    push: str = "embedded"
    mqtt_url: str | None = None
    mqtt_prefix: str = "walle"
    heartbeat_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0


class DeviceAgent:
    def __init__(self, config: AgentConfig, http: httpx.AsyncClient | None = None,
                 on_installed: InstallHook | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        check_name(config.device_id, "device id")
        if config.push not in ("embedded", "mqtt"):
            raise DeployError(f"[agent] unknown push channel {config.push!r} (embedded, mqtt)")
        if config.push == "mqtt" and not config.mqtt_url:
            raise DeployError("[agent] --push mqtt needs --mqtt URL")
        self.config = config
        self.base = config.server.rstrip("/")
        self.installer = TaskInstaller(config.state_dir / "tasks")
        self.downloads = config.state_dir / "downloads"
        self.keys = config.trusted_keys
        self.token: str | None = None
        self.on_installed = on_installed
        self.on_event = on_event
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=30)
        self._ws: Any = None
        self._notices = NoticeWorkers(self.process, self._on_process_error)
        self._manifests: dict[str, list[dict[str, Any]]] = {}
        self._rng = random.Random(config.device_id)
        self.connected = asyncio.Event()
        self.reconnects = 0
        # the order of this agent's results reports; starts from the clock so a restarted
        # agent's reports still supersede the ones it sent before the restart
        self._results_seq = time.time_ns() // 1000

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Enroll if needed, then hold the push connection forever, reconnecting with
        exponential backoff plus full jitter (so a server restart is not a thundering herd)."""
        await self.ensure_enrolled()
        backoff = self.config.backoff_initial_s
        while True:
            started = time.monotonic()
            try:
                if self.config.push == "embedded":
                    await self._run_websocket()
                else:
                    await self._run_mqtt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever ended the connection, the answer is to retry
                log.info("[agent] %s: push connection ended: %s", self.config.device_id, exc)
            self.connected.clear()
            self._ws = None
            self.reconnects += 1
            if time.monotonic() - started > 2 * backoff:
                backoff = self.config.backoff_initial_s
            await asyncio.sleep(self._rng.uniform(0, backoff))
            backoff = min(backoff * 2, self.config.backoff_max_s)

    async def close(self) -> None:
        await self._notices.close()
        if self._own_http:
            await self.http.aclose()

    def _emit(self, kind: str, **info: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, {"device": self.config.device_id, "t": time.time(), **info})

    # ------------------------------------------------------------ enrollment and keys

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def ensure_enrolled(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        token_file = self.config.state_dir / "device.token"
        if token_file.is_file():
            self.token = token_file.read_text().strip()
        else:
            if not self.config.enroll_token:
                raise DeployError(f"[agent] {self.config.device_id} has no token yet; pass --enroll-token")
            r = await self.http.post(f"{self.base}/v1/enroll", json={"device_id": self.config.device_id,
                                                                      "attrs": self.config.attrs},
                                     headers={"Authorization": f"Bearer {self.config.enroll_token}"})
            if r.status_code != 201:
                raise DeployError(f"[agent] enrollment of {self.config.device_id} failed: HTTP {r.status_code} "
                                  f"{_error_text(r)}")
            self.token = r.json()["token"]
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
        if not self.keys:
            self.keys = await self._pinned_keys()

    async def _pinned_keys(self) -> TrustedKeys:
        """Trust on first use: fetch the server's publisher keys once and pin them."""
        pinned = self.config.state_dir / "trusted_keys.json"
        if not pinned.is_file():
            log.warning("[agent] no --trusted-key given; pinning the server's signing keys (trust on first use)")
            r = await self.http.get(f"{self.base}/v1/signing-keys")
            r.raise_for_status()
            pinned.write_text(json.dumps(r.json()["keys"]))
        keys = [load_public_key(pem.encode(), f"pinned key in {pinned}") for pem in json.loads(pinned.read_text())]
        if not keys:
            raise DeployError("[agent] the server publishes no signing keys; pass --trusted-key")
        return TrustedKeys(keys)

    # ------------------------------------------------------------ push: embedded WebSocket

    async def _run_websocket(self) -> None:
        from websockets.asyncio.client import connect

        parts = urlsplit(self.base)
        url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{parts.path}/v1/push"
        async with connect(url, additional_headers=self._auth(), open_timeout=30, max_size=1 << 20,
                           ping_interval=None, compression=None) as ws:
            self._ws = ws
            self.connected.set()
            self._emit("connected")
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            try:
                async for raw in ws:
                    self._on_push_message(raw)
            finally:
                heartbeat.cancel()
                self._ws = None

    def _on_push_message(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("[agent] ignoring a push message that is not JSON")
            return
        if isinstance(message, dict) and message.get("type") == "notice":
            self.submit(message)
        elif isinstance(message, dict) and message.get("type") == "error":
            log.warning("[agent] server rejected a message: %s", message.get("error"))

    async def _heartbeat_loop(self) -> None:
        # the first beat at a random point of the interval: after a broker or server restart
        # the whole fleet reconnects at once, and its heartbeats must not stay synchronised
        await asyncio.sleep(self._rng.uniform(0, self.config.heartbeat_s))
        while True:
            await self._send({"type": "heartbeat", "attrs": self.config.attrs}, "/v1/device/heartbeat")
            await asyncio.sleep(self.config.heartbeat_s)

    # ------------------------------------------------------------ push: MQTT manifests

    async def _run_mqtt(self) -> None:
        assert self.config.mqtt_url is not None
        topics = [topic_for(self.config.mqtt_prefix, "all")]
        if "group" in self.config.attrs:
            topics.append(topic_for(self.config.mqtt_prefix, self.config.attrs["group"]))
        subscription = MqttSubscription(self.config.mqtt_url, topics, self._on_manifest,
                                        client_id=f"walle-{self.config.device_id}")
        run = asyncio.create_task(subscription.run())
        heartbeat = None
        try:
            await asyncio.wait([run, asyncio.create_task(subscription.subscribed.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                self.connected.set()
                self._emit("connected")
                heartbeat = asyncio.create_task(self._heartbeat_loop())
            await run
        finally:
            run.cancel()
            if heartbeat is not None:
                heartbeat.cancel()

    def _on_manifest(self, topic: str, entries: list[dict[str, Any]]) -> None:
        self._manifests[topic] = entries
        for entry in manifest_choices(self._manifests, self.config.device_id, self.config.attrs, self._current_digest):
            if self._current_digest(entry["task"]) != entry.get("digest") \
                    and self._notices.inflight_digest(entry["task"]) != entry.get("digest"):
                self.submit(entry)

    def _current_digest(self, task: str) -> str | None:
        current = self.installer.current(task) if _valid_name(task) else None
        return None if current is None else current.digest

    # ------------------------------------------------------------ reports

    async def _send(self, message: dict[str, Any], path: str) -> None:
        """Over the WebSocket when it is up (no extra request), else a plain HTTP POST."""
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(json.dumps(message))
                return
            except (OSError, RuntimeError, ConnectionError) as exc:  # websockets' ConnectionClosed included
                log.debug("[agent] push socket send failed, using HTTP: %s", exc)
        await self._post(message, path)

    async def _post(self, message: dict[str, Any], path: str) -> bool:
        """POST with retries on 5xx and network errors; True when the server accepted it."""
        for attempt in range(REPORT_ATTEMPTS):
            try:
                r = await self.http.post(f"{self.base}{path}", json=message, headers=self._auth())
                if r.status_code < 500:
                    if r.status_code >= 400:  # the server will never accept it; retrying cannot help
                        log.warning("[agent] %s rejected: HTTP %s %s", path, r.status_code, _error_text(r))
                    return r.status_code < 400
                failure = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__} {exc}"
            await asyncio.sleep(self._rng.uniform(0.5, 1.5) * 2 ** attempt)
        log.warning("[agent] %s failed %d times, dropped: %s", path, REPORT_ATTEMPTS, failure)
        return False

    async def report(self, release: int, state: str, reason: str = "") -> None:
        await self._send({"type": "report", "release": release, "state": state, "reason": reason},
                         "/v1/device/report")

    async def report_results(self, task: str, version: str, metrics: dict[str, Any]) -> bool:
        """Send this device's *cumulative* results for ``task`` ``version``: ``inferences``,
        ``errors``, ``latency_ms`` ``{"p50", "p99"}`` (or None before any) and ``backend``.

        Callers batch: one call per version every few seconds and a last one at shutdown, not
        one per inference. The server keeps the latest report per version, so a dropped report
        costs nothing but freshness. Always plain HTTP, even with a push socket up, because the
        caller learns whether the server stored it (True) or rejected or never got it (False)."""
        self._results_seq += 1
        return await self._post({"task": task, "version": version, "seq": self._results_seq, "metrics": metrics},
                                "/v1/device/results")

    # ------------------------------------------------------------ pull and install

    def submit(self, notice: dict[str, Any]) -> None:
        """Queue a notice (see ``NoticeWorkers``: the newest per task, one at a time)."""
        self._notices.submit(notice)

    async def _on_process_error(self, task: str, notice: dict[str, Any], exc: Exception) -> None:
        log.exception("[agent] processing %s failed", task)
        if isinstance(notice.get("release"), int):
            await self.report(notice["release"], "failed", f"agent error: {exc}")

    async def process(self, notice: dict[str, Any]) -> None:
        try:
            task, version, digest, url, release = parse_notice(notice)
        except (KeyError, TaskError) as exc:
            log.warning("[agent] ignoring malformed notice: %s", exc)
            return
        current = self.installer.current(task)
        if current is not None and current.digest == digest:
            await self.report(release, "installed")
            return
        try:
            if self.installer.has(task, version, digest):  # rollback to a version kept on disk
                installed = self.installer.switch(task, version, digest)
            else:
                delay = self._rng.uniform(0, float(notice.get("jitter_s") or 0))
                delay += self._rng.uniform(0, float(notice.get("spread_s") or 0))
                if delay > 0:
                    await asyncio.sleep(delay)
                path = await self.download(url, digest)
                self._emit("downloaded", task=task, version=version)
                try:
                    install = asyncio.ensure_future(asyncio.to_thread(self.installer.install, path, self.keys,
                                                                      task, version, digest))
                    # "installed" implies "downloaded" (the server counts it so): a separate
                    # report only when verifying and unpacking takes long enough to be worth
                    # showing, which halves the reports of a fleet pulling small bundles
                    done, _ = await asyncio.wait({install}, timeout=DOWNLOADED_REPORT_AFTER_S)
                    if not done:
                        await self.report(release, "downloaded")
                    installed = await install
                finally:
                    path.unlink(missing_ok=True)
        except (DeployError, OSError) as exc:
            self._emit("failed", task=task, version=version, reason=str(exc))
            await self.report(release, "failed", str(exc))
            return
        # the start hook runs before "installed" is reported: a version that cannot start
        # must count as a failure, never as a success the stage may advance on
        started = False
        if self.on_installed is not None:
            try:
                started = self.on_installed(installed.path)
                if inspect.isawaitable(started):
                    started = await started
            except TaskStartError as exc:
                await self._start_failed(task, version, release, str(exc))
                return
        self._emit("installed", task=task, version=version, digest=digest)
        await self.report(release, "installed")
        if started:
            await self.report(release, "running")

    async def _start_failed(self, task: str, version: str, release: int, reason: str) -> None:
        """A version that cannot start must not stay current: go back to the one before it
        (kept on disk, so no download), then report the failure."""
        if self.installer.previous(task) is not None:
            self.installer.rollback(task)
        self._emit("failed", task=task, version=version, reason=reason)
        await self.report(release, "failed", reason)

    async def download(self, url: str, digest: str) -> Path:
        """Pull a bundle into ``downloads/<digest>.part``, resuming a partial file with a
        Range request (guarded by If-Range so a changed file restarts), then check its digest."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = self.downloads / f"{digest}.part"
        same_origin = url.startswith(self.base + "/")
        for attempt in range(DOWNLOAD_ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            headers = self._auth() if same_origin else {}
            if have:
                headers.update({"Range": f"bytes={have}-", "If-Range": f'"{digest}"'})
            try:
                async with self.http.stream("GET", url, headers=headers) as r:
                    if r.status_code == 416:
                        part.unlink(missing_ok=True)
                        continue
                    if r.status_code in (401, 403, 404):
                        await r.aread()
                        raise DownloadError(f"[agent] download refused: HTTP {r.status_code} {_error_text(r)}")
                    if r.status_code not in (200, 206):
                        raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                    append = r.status_code == 206 and r.headers.get("content-range", "").startswith(f"bytes {have}-")
                    # hash while writing: no second pass over the file and no worker-thread hop
                    # per pull; only a resumed pull re-reads the part it already has
                    hasher = await asyncio.to_thread(_hash_of, part) if append else hashlib.sha256()
                    with _open_part(part, append) as f:
                        async for chunk in r.aiter_bytes():
                            f.write(chunk)
                            hasher.update(chunk)
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if attempt + 1 == DOWNLOAD_ATTEMPTS:
                    raise DownloadError(f"[agent] download of {digest[:12]} failed: {exc}") from exc
                await asyncio.sleep(self._rng.uniform(0.1, 0.5) * 2 ** attempt)
        else:
            raise DownloadError(f"[agent] download of {digest[:12]} failed: every resume was refused (HTTP 416)")
        actual = hasher.hexdigest()
        if actual != digest:
            part.unlink(missing_ok=True)
            raise BundleError(f"[agent] downloaded bundle has SHA-256 {actual[:12]}, notice says {digest[:12]}: "
                              "truncated or tampered")
        return part


def entry_applies(entry: dict[str, Any], device_id: str, attrs: dict[str, str],
                  current_digest: Callable[[str], str | None]) -> bool:
    """The server's rule (``RolloutEngine.applies``) evaluated on the device for one entry of
    a broadcast manifest; ``current_digest(task)`` is the digest the device runs now."""
    try:
        if entry.get("frozen"):
            return current_digest(entry["task"]) == entry["digest"]
        if not parse_target(entry["target"]).matches(device_id, attrs):
            return False
        stages = tuple(Stage(str(n), float(p), str(t)) for n, p, t in entry["stages"])
        stage = first_stage(stages, entry["salt"], device_id, attrs)
        return stage is not None and stage <= int(entry["stage_index"])
    except (KeyError, TypeError, ValueError, DeployError):
        return False


def manifest_choices(manifests: dict[str, list[dict[str, Any]]], device_id: str, attrs: dict[str, str],
                     current_digest: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """Per task, the newest entry over all subscribed manifest topics that applies to this
    device: what it should run. Malformed entries are skipped."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for entries in manifests.values():
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("task"), str) and _valid_name(entry["task"]):
                by_task.setdefault(entry["task"], []).append(entry)
    chosen = []
    for candidates in by_task.values():
        for entry in sorted(candidates, key=lambda e: -_release_number(e)):
            if entry_applies(entry, device_id, attrs, current_digest):
                chosen.append(entry)
                break
    return chosen


def _release_number(entry: dict[str, Any]) -> int:
    release = entry.get("release", 0)
    return release if type(release) is int else 0


def _hash_of(path: Path) -> Any:
    """A running SHA-256 of the bytes already in ``path`` (the part a resumed pull extends)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher


def _open_part(path: Path, append: bool) -> BinaryIO:
    """Plain buffered writes: a chunk lands in the page cache in microseconds, far less than
    a hop to a worker thread per chunk would cost."""
    return open(path, "ab" if append else "wb")


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except TaskError:
        return False
    return True


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", ""))
    except ValueError:
        return r.text[:200]
