"""The two routes every device hits during a release, served as plain ASGI in front of the
Starlette app: bundle pulls (``GET|HEAD /v1/bundles/<digest>``) and the push WebSocket
(``/v1/push``).

Why: a profile of the server during a 4,000-device release put about half its CPU in
Starlette's layers around these two routes (error and exception middleware wrapping every
``send``, route matching, request objects) and in the worker-thread hop for each bundle
read (anyio creating threads and acquiring its capacity limiter). Here a pull is a dict
lookup, a ``stat`` and two ``send`` calls, and a push message goes straight to uvicorn.
Every other route stays with Starlette. The rules are unchanged: device token, the release
policy's ``may_fetch``, the digest as a strong ETag, one ``Range`` guarded by ``If-Range``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from walle_deploy.bundle import CHUNK, DIGEST_RE
from walle_deploy.push.embedded import EmbeddedHub
from walle_deploy.server import auth

if TYPE_CHECKING:
    from walle_deploy.server.app import DeployServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUNDLE_PREFIX = "/v1/bundles/"
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: bundles up to this size are kept in memory after their first pull; larger ones are streamed
CACHE_ENTRY_MAX = 8 << 20
CACHE_TOTAL_MAX = 256 << 20


class BundleCache:
    """Recently pulled bundles in memory, least recently used out first.

    Bundles are content-addressed and never rewritten, but an entry is still checked against
    a ``stat`` of the file on every pull (size and mtime): a file replaced or damaged on disk
    is served as it now is, exactly as without the cache, and the device's digest check
    catches it (the simulator's tamper probe relies on this)."""

    def __init__(self, max_bytes: int = CACHE_TOTAL_MAX) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: collections.OrderedDict[str, tuple[int, int, bytes]] = collections.OrderedDict()

    async def get(self, path: Path, st: os.stat_result) -> bytes:
        key = str(path)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            self._entries.move_to_end(key)
            return entry[2]
        data = await anyio.to_thread.run_sync(path.read_bytes)
        self._put(key, st, data)
        return data

    def _put(self, key: str, st: os.stat_result, data: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old[2])
        if len(data) != st.st_size or len(data) > CACHE_ENTRY_MAX:
            return  # changed while being read, or too big to keep
        self._entries[key] = (st.st_size, st.st_mtime_ns, data)
        self.size += len(data)
        while self.size > self.max_bytes and self._entries:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self.size -= len(dropped)


class PushSocket:
    """A device's push WebSocket as the hub sees it: send a text message, close."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def send_text(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def close(self, code: int = 1000) -> None:
        await self._send({"type": "websocket.close", "code": code})


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class HotPaths:
    """ASGI app: bundle pulls and the push socket here, everything else to ``app``."""

    def __init__(self, app: ASGIApp, server: DeployServer) -> None:
        self.app, self.server = app, server
        self.cache = BundleCache()
        #: the Starlette app's state (``state.deploy`` is the server), for tests and embedders
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, path = scope["type"], scope.get("path", "")
        if kind == "http" and path.startswith(BUNDLE_PREFIX) and scope["method"] in ("GET", "HEAD"):
            try:
                await self.bundle(scope, send, path[len(BUNDLE_PREFIX):])
            except HTTPException as exc:
                await _send_json(send, exc.status_code, {"error": exc.detail})
        elif kind == "websocket" and path == "/v1/push":
            await self.push(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ------------------------------------------------------------ bundles

    async def bundle(self, scope: Scope, send: Send, digest: str) -> None:
        server = self.server
        if not DIGEST_RE.match(digest):
            raise HTTPException(404, "no such bundle")
        conn = HTTPConnection(scope)
        token = auth.bearer(conn)
        if token is None or not auth.same(token, server.config.admin_token):
            device = server.device_from(conn)
            if not server.engine.may_fetch(device, digest):
                raise HTTPException(403, f"bundle {digest[:12]} is not released to device {device.id}")
        path = server.blobs.path(digest)
        try:
            st = os.stat(path)
        except OSError:
            raise HTTPException(404, "no such bundle") from None
        size, etag = st.st_size, f'"{digest}"'
        headers = [(b"etag", etag.encode()), (b"accept-ranges", b"bytes"),
                   (b"cache-control", b"private, max-age=31536000, immutable")]
        request_headers = conn.headers
        if request_headers.get("if-none-match") in (etag, "*"):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        start, end, status = 0, size - 1, 200
        spec, if_range = request_headers.get("range"), request_headers.get("if-range")
        if spec and (if_range is None or if_range == etag):
            m = RANGE_RE.match(spec.strip())
            if m is None or m.groups() == ("", ""):
                raise HTTPException(416, "only a single 'bytes=START-END' range is supported")
            first, last = m.groups()
            if first == "":  # suffix range: the last N bytes
                start, end = max(0, size - int(last)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                await _send_json(send, 416, {"error": "range not satisfiable"},
                                 [*headers, (b"content-range", f"bytes */{size}".encode())])
                return
            status = 206
            headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        length = end - start + 1
        headers += [(b"content-length", str(length).encode()), (b"content-type", b"application/x-tar")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        server.metrics.bundle_requests += 1
        if size <= CACHE_ENTRY_MAX:
            block = (await self.cache.get(path, st))[start:end + 1]
            server.metrics.bytes_served += len(block)
            await send({"type": "http.response.body", "body": block})
            return
        async with await anyio.open_file(path, "rb") as f:
            await f.seek(start)
            while length > 0:
                block = await f.read(min(CHUNK, length))
                if not block:
                    break
                length -= len(block)
                server.metrics.bytes_served += len(block)
                await send({"type": "http.response.body", "body": block, "more_body": length > 0})
        if length > 0:  # the file shrank under us: end the response; the device's digest check fails
            await send({"type": "http.response.body", "body": b""})

    # ------------------------------------------------------------ push socket

    async def push(self, scope: Scope, receive: Receive, send: Send) -> None:
        server, hub = self.server, self.server.channel
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            device = server.device_from(HTTPConnection(scope))
        except HTTPException:
            await send({"type": "websocket.close", "code": 1008})  # before accept: the client sees HTTP 403
            return
        if not isinstance(hub, EmbeddedHub):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        sock = PushSocket(send)
        old = hub.attach(device.id, sock)
        if old is not None:
            try:
                await old.close(1000)
            except (RuntimeError, OSError):  # the old socket is already gone
                pass
        try:
            device.last_seen = time.time()
            for notice in server.engine.on_connect(device):
                await sock.send_text(json.dumps(notice))
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        text = (message.get("bytes") or b"").decode("utf-8", "replace")
                    await server.push_message(device, text, sock)
                elif message["type"] == "websocket.disconnect":
                    break
        except OSError:  # uvicorn's ClientDisconnected when a send races the peer's close
            pass
        finally:
            hub.detach(device.id, sock)
