"""The deploy server's HTTP API (Starlette).

Admin routes (``/v1/admin/...``) need the admin token; device routes need the device's own
token from enrollment; enrollment needs the fleet enrollment token. Bundles are served with
the digest as a strong ETag and single-range ``Range`` support, so an interrupted pull
resumes where it stopped and any cache in between can keep them forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from walle_deploy.bundle import MAX_TOTAL_BYTES, verify_and_extract
from walle_deploy.errors import BundleError, DeployError
from walle_deploy.policy import parse_stages
from walle_deploy.push import PushChannel
from walle_deploy.push.embedded import EmbeddedHub
from walle_deploy.server import auth
from walle_deploy.server.blobs import BlobStore
from walle_deploy.server.hotpaths import HotPaths, PushSocket
from walle_deploy.server.results import MAX_RESULTS_BODY, ResultRecord, aggregate, parse_metrics
from walle_deploy.server.rollout import RolloutEngine
from walle_deploy.server.store import STATES, BundleRecord, Device, Store
from walle_deploy.signing import TrustedKeys, public_pem
from walle_deploy.task import NAME_RE

ATTR_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
MAX_ATTRS = 32
MAX_ATTR_VALUE = 128
MAX_JSON_BODY = 64 << 10


@dataclass
class ServerConfig:
    data_dir: Path
    admin_token: str
    enroll_token: str
    trusted_keys: TrustedKeys
    #: base URL devices use to reach this server (goes into notices)
    public_url: str
    #: base URL bundles are pulled from instead, e.g. a CDN in front of the blob store
    bundle_base_url: str | None = None
    push: PushChannel = field(default_factory=EmbeddedHub)
    flush_interval_s: float = 0.2


@dataclass
class Metrics:
    bytes_served: int = 0
    bundle_requests: int = 0
    started: float = field(default_factory=time.time)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class DeployServer:
    """Holds the store, blob store, push channel and rollout engine behind the routes."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.data_dir / "deploy.sqlite3")
        self.blobs = BlobStore(config.data_dir / "bundles")
        self.channel = config.push
        base = (config.bundle_base_url or config.public_url).rstrip("/")
        self.engine = RolloutEngine(self.store, self.channel, lambda digest: f"{base}/v1/bundles/{digest}")
        self.metrics = Metrics()

    # ------------------------------------------------------------ auth

    def require_admin(self, conn: HTTPConnection) -> None:
        token = auth.bearer(conn)
        if token is None or not auth.same(token, self.config.admin_token):
            raise _error(401, "admin token missing or wrong")

    def device_from(self, conn: HTTPConnection) -> Device:
        token = auth.bearer(conn)
        parts = auth.split_device_token(token) if token else None
        device = self.store.devices.get(parts[0]) if parts else None
        if device is None or parts is None or not auth.same(auth.token_hash(parts[1]), device.token_hash):
            raise _error(401, "device token missing or wrong")
        return device

    # ------------------------------------------------------------ helpers

    @staticmethod
    async def json_body(request: Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
        body = await request.body()
        if len(body) > limit:
            raise _error(413, f"JSON body larger than {limit} bytes")
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise _error(400, f"body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise _error(400, "body must be a JSON object")
        return data

    @staticmethod
    def check_attrs(attrs: Any) -> dict[str, str]:
        if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRS:
            raise _error(400, f"'attrs' must be an object with at most {MAX_ATTRS} entries")
        for key, value in attrs.items():
            if not ATTR_KEY_RE.match(key) or not isinstance(value, str) or len(value) > MAX_ATTR_VALUE:
                raise _error(400, f"attribute {key!r}: keys are identifiers, values strings of at most "
                                  f"{MAX_ATTR_VALUE} characters")
        return dict(attrs)

    # ------------------------------------------------------------ device routes

    async def enroll(self, request: Request) -> Response:
        token = auth.bearer(request)
        if token is None or not auth.same(token, self.config.enroll_token):
            raise _error(401, "enrollment token missing or wrong")
        data = await self.json_body(request)
        device_id = data.get("device_id")
        if not isinstance(device_id, str) or not NAME_RE.match(device_id):
            raise _error(400, "'device_id' must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
        attrs = self.check_attrs(data.get("attrs", {}))
        if device_id in self.store.devices:
            raise _error(409, f"device {device_id!r} is already enrolled")
        secret = auth.new_token()
        device = Device(device_id, auth.token_hash(secret), attrs, time.time(), time.time())
        self.store.save_device(device)
        self.engine.device_enrolled(device)
        return JSONResponse({"device_id": device_id, "token": f"{device_id}:{secret}"}, status_code=201)

    async def heartbeat(self, request: Request) -> Response:
        device = self.device_from(request)
        data = await self.json_body(request)
        attrs = self.check_attrs(data["attrs"]) if "attrs" in data else None
        await self.engine.device_seen(device, attrs)
        return JSONResponse({"ok": True})

    async def report(self, request: Request) -> Response:
        device = self.device_from(request)
        await self.handle_report(device, await self.json_body(request))
        return JSONResponse({"ok": True})

    async def handle_report(self, device: Device, data: dict[str, Any]) -> None:
        release, state, reason = data.get("release"), data.get("state"), data.get("reason", "")
        if type(release) is not int or state not in STATES or state == "notified" or not isinstance(reason, str):
            raise _error(400, f"report needs 'release' (int), 'state' (one of {', '.join(STATES[1:])}) "
                              "and an optional string 'reason'")
        try:
            await self.engine.report(device, release, state, reason)
        except PermissionError as exc:
            raise _error(403, str(exc)) from exc
        except DeployError as exc:
            raise _error(404, str(exc)) from exc

    async def results(self, request: Request) -> Response:
        """A device's cumulative task results for one version (see :mod:`.results`)."""
        device = self.device_from(request)
        data = await self.json_body(request, MAX_RESULTS_BODY)
        unknown = sorted(set(data) - {"task", "version", "seq", "metrics"})
        if unknown:
            raise _error(400, f"results: unknown field {unknown[0]!r} (allowed: metrics, seq, task, version)")
        task, version, seq = data.get("task"), data.get("version"), data.get("seq")
        if not isinstance(task, str) or not isinstance(version, str):
            raise _error(400, "results: 'task' and 'version' are required strings")
        if type(seq) is not int or not 0 <= seq < 2**62:  # SQLite integers are 64-bit
            raise _error(400, "results: 'seq' is required and must be an integer in [0, 2**62)")
        try:
            inferences, errors, p50, p99, backend = parse_metrics(data.get("metrics"))
        except DeployError as exc:
            raise _error(400, str(exc)) from exc
        if task not in self.store.tasks():
            raise _error(404, f"results: unknown task {task!r}")
        # released to the device = a release of this version notified it or applies to it now;
        # versions it ran before a rollback keep counting, versions it never got do not
        if not any(r.version == version and ((r.id, device.id) in self.store.deliveries or self.engine.applies(r, device))
                   for r in self.store.releases_of(task)):
            raise _error(403, f"results: {task} {version!r} was not released to device {device.id}")
        kept = self.store.put_result(ResultRecord(device.id, task, version, seq, inferences, errors, p50, p99,
                                                  backend, time.time()))
        return JSONResponse({"ok": True, "stored": kept})

    async def notices(self, request: Request) -> Response:
        """Polling fallback: the notices the device's push connection would have delivered."""
        device = self.device_from(request)
        return JSONResponse({"notices": self.engine.on_connect(device)})

    async def push_message(self, device: Device, message: str, ws: PushSocket) -> None:
        """One message a device sent over its push socket (see :mod:`.hotpaths`): a report or
        a heartbeat; anything else is answered with an error message on the socket."""
        try:
            data = json.loads(message)
            if not isinstance(data, dict):
                raise _error(400, "push message must be a JSON object")
            if data.get("type") == "report":
                await self.handle_report(device, data)
            elif data.get("type") == "heartbeat":
                attrs = self.check_attrs(data["attrs"]) if "attrs" in data else None
                await self.engine.device_seen(device, attrs)
            else:
                raise _error(400, f"unknown push message type {data.get('type')!r}")
        except ValueError as exc:
            await ws.send_text(json.dumps({"type": "error", "status": 400, "error": f"invalid JSON: {exc}"}))
        except HTTPException as exc:
            await ws.send_text(json.dumps({"type": "error", "status": exc.status_code, "error": exc.detail}))

    async def signing_keys(self, request: Request) -> Response:
        return JSONResponse({"keys": [public_pem(k).decode() for k in self.config.trusted_keys.public_keys()]})

    # ------------------------------------------------------------ admin routes

    async def upload(self, request: Request) -> Response:
        self.require_admin(request)
        fd, tmp = tempfile.mkstemp(dir=self.blobs.incoming, suffix=".part")
        tmp_path = Path(tmp)
        try:
            written = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    written += len(chunk)
                    if written > MAX_TOTAL_BYTES + (16 << 20):
                        raise _error(413, "bundle too large")
                    f.write(chunk)
            try:
                manifest = await asyncio.to_thread(verify_and_extract, tmp_path, self.config.trusted_keys, None)
            except BundleError as exc:
                raise _error(400, str(exc)) from exc
            digest = self.blobs.adopt(tmp_path)
        finally:
            tmp_path.unlink(missing_ok=True)
        record = BundleRecord(digest, manifest.task, manifest.version, written,
                              json.loads(manifest.to_bytes()), time.time())
        try:
            record = self.store.add_bundle(record)
        except DeployError as exc:
            raise _error(409, str(exc)) from exc
        return JSONResponse({"task": record.task, "version": record.version, "digest": record.digest,
                             "size": record.size}, status_code=201)

    async def create_release(self, request: Request) -> Response:
        self.require_admin(request)
        data = await self.json_body(request)
        try:
            stage_targets = data.get("stage_targets") or {}
            if not isinstance(stage_targets, dict):
                raise DeployError("[deploy] 'stage_targets' must map stage names to target expressions")
            release = await self.engine.create_release(
                task=_str(data, "task"), version=_str(data, "version"), target=_str(data, "target", "all"),
                stages=parse_stages(_str(data, "stages", "100"), stage_targets),
                abort_rate=_num(data, "abort_failure_rate", 0.2), min_reports=int(_num(data, "min_reports", 10)),
                rate=_num(data, "rate", 0.0), jitter_s=_num(data, "jitter_s", 0.0),
                advance_at=_num(data, "advance_at", 0.9), auto_advance=bool(data.get("auto_advance", True)))
        except DeployError as exc:
            raise _error(404 if "not published" in str(exc) else 400, str(exc)) from exc
        return JSONResponse(release.to_json(), status_code=201)

    async def task_action(self, request: Request) -> Response:
        self.require_admin(request)
        task, action = request.path_params["task"], request.path_params["action"]
        try:
            if action == "advance":
                release = await self.engine.advance(task)
            elif action == "rollback":
                release = await self.engine.rollback(task)
            else:
                raise _error(404, f"unknown action {action!r}")
        except DeployError as exc:
            raise _error(409, str(exc)) from exc
        return JSONResponse(release.to_json())

    async def status(self, request: Request) -> Response:
        self.require_admin(request)
        try:
            report = self.engine.status(request.path_params["task"])
        except DeployError as exc:
            raise _error(404, str(exc)) from exc
        report["results"] = aggregate(self.store.results_of(report["task"]))
        return JSONResponse(report)

    async def tasks(self, request: Request) -> Response:
        self.require_admin(request)
        return JSONResponse({task: [{"version": b.version, "digest": b.digest, "size": b.size} for b in bundles]
                             for task, bundles in self.store.tasks().items()})

    async def metrics_route(self, request: Request) -> Response:
        self.require_admin(request)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return JSONResponse({
            "push": self.channel.name, "connected": self.channel.connected_count(),
            "devices": len(self.store.devices), "bytes_served": self.metrics.bytes_served,
            "bundle_requests": self.metrics.bundle_requests, "rss_bytes": rss_bytes(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "uptime_s": round(time.time() - self.metrics.started, 3),
        })

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "push": self.channel.name})

    # ------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.channel.start()
        if not self.channel.per_device:
            await self.channel.publish_manifests(self.engine.manifests())
        tasks = [asyncio.create_task(self.engine.run_outbox()), asyncio.create_task(self._flush_loop())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.channel.close()
            self.store.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            self.store.flush()


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise DeployError(f"[deploy] field '{key}' is required and must be a string")
    return value


def _num(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeployError(f"[deploy] field '{key}' must be a number")
    return float(value)


async def _http_error(request: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(config: ServerConfig) -> HotPaths:
    """The deploy server as an ASGI app: the hot device routes (bundle pulls, the push socket)
    as plain ASGI (:mod:`.hotpaths`), every other route through Starlette."""
    server = DeployServer(config)
    routes = [
        Route("/v1/health", server.health),
        Route("/v1/signing-keys", server.signing_keys),
        Route("/v1/enroll", server.enroll, methods=["POST"]),
        Route("/v1/device/heartbeat", server.heartbeat, methods=["POST"]),
        Route("/v1/device/report", server.report, methods=["POST"]),
        Route("/v1/device/results", server.results, methods=["POST"]),
        Route("/v1/device/notices", server.notices),
        Route("/v1/admin/bundles", server.upload, methods=["POST"]),
        Route("/v1/admin/releases", server.create_release, methods=["POST"]),
        Route("/v1/admin/tasks", server.tasks),
        Route("/v1/admin/tasks/{task}/status", server.status),
        Route("/v1/admin/tasks/{task}/{action}", server.task_action, methods=["POST"]),
        Route("/v1/admin/metrics", server.metrics_route),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan, exception_handlers={HTTPException: _http_error})
    app.state.deploy = server
    return HotPaths(app, server)
