"""The fleet simulator's network clients: a minimal HTTP/1.1 keep-alive client and a minimal
WebSocket client, both plain ``asyncio.Protocol`` objects.

Why not httpx and websockets, as the real agent uses: a real device has a CPU of its own,
but the simulator runs thousands of devices on one core, so the client library's cost per
request becomes the simulator's ceiling. Profiling put httpx + httpcore + anyio at about
2 ms of CPU per bundle pull; here a request is one ``write`` and a response one header
parse. The bytes on the wire are ordinary HTTP/1.1 and RFC 6455 frames, so the server
cannot tell these clients from real ones.

Deliberately small: ``Content-Length`` bodies only (the deploy server always sends one),
no redirects, no TLS, text and control frames only (no extensions).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from walle_deploy.errors import DeployError

MAX_HEAD_BYTES = 64 << 10
MAX_BODY_BYTES = 256 << 20
MAX_FRAME_BYTES = 1 << 20
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class SimNetError(DeployError, ConnectionError):
    """A connection failed or the peer sent something this client does not speak."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise SimNetError(f"[simnet] malformed status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise SimNetError(f"[simnet] malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._head: tuple[int, dict[str, str]] | None = None
        self._length = 0
        self._no_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(SimNetError(f"[simnet] connection closed by the server{f': {exc}' if exc else ''}"))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._waiter = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except SimNetError as exc:
            self._fail(exc)
            self.close()

    def _parse(self) -> None:
        if self._waiter is None:
            if self._buf:
                raise SimNetError("[simnet] the server sent bytes nobody asked for")
            return
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise SimNetError("[simnet] response head larger than 64 KiB")
                return
            status, headers = _parse_head(bytes(self._buf[:end]))
            del self._buf[:end + 4]
            if self._no_body or status in (204, 304) or 100 <= status < 200:
                length = 0
            elif "content-length" in headers and headers["content-length"].isdigit():
                length = int(headers["content-length"])
            else:
                raise SimNetError(f"[simnet] HTTP {status} response without Content-Length (chunked bodies "
                                  "are not supported by the simulator's client)")
            if length > MAX_BODY_BYTES:
                raise SimNetError(f"[simnet] response body of {length} bytes is over the limit")
            self._head, self._length = (status, headers), length
        if len(self._buf) >= self._length:
            body = bytes(self._buf[:self._length])
            del self._buf[:self._length]
            (status, headers), self._head = self._head, None
            waiter, self._waiter = self._waiter, None
            if not waiter.done():
                waiter.set_result(HttpResponse(status, headers, body))
            if headers.get("connection", "").lower() == "close":
                self.close()

    async def request(self, raw: bytes, no_body: bool = False, timeout_s: float = 60.0) -> HttpResponse:
        if self.closed or self.transport is None or self._waiter is not None:
            raise SimNetError("[simnet] connection is closed or busy")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._no_body = no_body
        # a timer, not asyncio.wait_for: that wraps every request in a task of its own
        timer = loop.call_later(timeout_s, self._time_out, waiter)
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _time_out(self, waiter: asyncio.Future[HttpResponse]) -> None:
        if not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())
            self._waiter = None
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Up to ``size`` keep-alive connections to one host, shared by many simulated devices.

    A request waits for a free connection in FIFO order (an O(1) wake-up); a connection the
    server closed while idle (keep-alive timeout) is replaced and the request sent once more."""

    def __init__(self, host: str, port: int, size: int, timeout_s: float = 60.0) -> None:
        if size < 1:
            raise DeployError("[simnet] a pool needs at least one connection")
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self._idle: collections.deque[HttpConnection] = collections.deque()
        self._slots = asyncio.Semaphore(size)
        self.requests = 0

    async def _connect(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(HttpConnection, self.host, self.port)
        return conn

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"", content_type: str = "application/json") -> HttpResponse:
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode())
        head.append(b"\r\n")
        raw = b"".join(head) + body
        async with self._slots:
            self.requests += 1
            for attempt in (0, 1):
                conn = None
                while self._idle:
                    candidate = self._idle.popleft()
                    if not candidate.closed:
                        conn = candidate
                        break
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(self._connect(), self.timeout_s)
                    response = await conn.request(raw, no_body=method == "HEAD", timeout_s=self.timeout_s)
                except (OSError, asyncio.TimeoutError) as exc:
                    if conn is not None:
                        conn.close()
                    # only a reused connection may have been closed by the server while idle
                    if attempt == 0 and reused:
                        continue
                    raise SimNetError(f"[simnet] {method} {path}: {type(exc).__name__} {exc}") from exc
                if not conn.closed:
                    self._idle.append(conn)
                return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        while self._idle:
            self._idle.popleft().close()


def _mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 client masking: XOR with the 4-byte key repeated, as one big-integer XOR."""
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + _mask(payload, key)


class WebSocketClient(asyncio.Protocol):
    """A WebSocket client connection: text messages in (``on_message``), text messages out.

    ``opened`` resolves after the server's 101 answer was checked; ``closed`` resolves when
    the connection ends for any reason, so a device's reconnect loop just awaits it."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str],
                 on_message: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self._key = base64.b64encode(os.urandom(16))
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._handshake = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()
        self._buf = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self._handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        error = SimNetError(f"[simnet] WebSocket closed{f': {exc}' if exc else ''}")
        if not self.opened.done():
            self.opened.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            if not self._upgraded:
                self._read_handshake()
            if self._upgraded:
                self._read_frames()
        except SimNetError as exc:
            if not self.opened.done():
                self.opened.set_exception(exc)
            self.close()

    def _read_handshake(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise SimNetError("[simnet] WebSocket handshake answer larger than 64 KiB")
            return
        status, headers = _parse_head(bytes(self._buf[:end]))
        del self._buf[:end + 4]
        if status != 101:
            raise SimNetError(f"[simnet] WebSocket upgrade refused: HTTP {status}")
        expected = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise SimNetError("[simnet] WebSocket upgrade answer has a wrong Sec-WebSocket-Accept")
        self._upgraded = True
        self.opened.set_result(None)

    def _read_frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            if b1 & 0x80:
                raise SimNetError("[simnet] the server sent a masked frame")
            n, offset = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, offset = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, offset = int.from_bytes(buf[2:10], "big"), 10
            if n > MAX_FRAME_BYTES:
                raise SimNetError(f"[simnet] frame of {n} bytes is over the limit")
            if len(buf) < offset + n:
                return
            payload = bytes(buf[offset:offset + n])
            del buf[:offset + n]
            self._on_frame(b0 & 0x80 != 0, b0 & 0x0F, payload)

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping
            self._write(0xA, payload)
        elif opcode == 0x8:  # close: answer and drop the connection
            self._write(0x8, payload[:2])
            self.close()
        elif opcode in (0x1, 0x2, 0x0):
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = []
                self.on_message(message)
        # 0xA (pong) and reserved opcodes are ignored

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(opcode, payload))

    def send_text(self, text: bytes) -> bool:
        """Queue one text message (UTF-8 bytes); False when the connection is already gone."""
        if self.transport is None or self.transport.is_closing() or not self._upgraded:
            return False
        self.transport.write(_frame(0x1, text))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_websocket(host: str, port: int, path: str, headers: dict[str, str],
                         on_message: Callable[[bytes], None], timeout_s: float = 30.0) -> WebSocketClient:
    """Connect and upgrade; raises :class:`SimNetError` (or ``OSError``) when that fails."""
    loop = asyncio.get_running_loop()
    _, ws = await asyncio.wait_for(
        loop.create_connection(lambda: WebSocketClient(host, port, path, headers, on_message), host, port),
        timeout_s)
    try:
        await asyncio.wait_for(asyncio.shield(ws.opened), timeout_s)
    except BaseException:
        ws.close()
        raise
    return ws


# ---------------------------------------------------------------- MQTT 3.1.1 subscriber

MQTT_KEEPALIVE_S = 30


def mqtt_length(n: int) -> bytes:
    """MQTT's variable-length "remaining length": 7 bits per byte, high bit = more follows."""
    if not 0 <= n < 1 << 28:
        raise SimNetError(f"[simnet] MQTT remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


class MqttSubscriber(asyncio.Protocol):
    """A subscribe-only MQTT 3.1.1 client: CONNECT (persistent session), SUBSCRIBE at QoS 1,
    PUBLISH in (QoS 0 or 1, acknowledged), PINGREQ every keepalive period.

    What the simulated devices need of paho, for a fraction of its cost per message (paho was
    most of a simulated MQTT device's CPU). ``subscribed`` resolves once the broker granted
    every subscription; ``closed`` when the connection ends."""

    def __init__(self, client_id: str, topics: list[str], on_publish: Callable[[str, bytes], None],
                 keepalive_s: int = MQTT_KEEPALIVE_S) -> None:
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.client_id, self.topics, self.on_publish = client_id, topics, on_publish
        self.keepalive_s = keepalive_s
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._ping: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # variable header: protocol name, level 4 (3.1.1), flags 0 (no clean session: the broker
        # keeps the subscriptions and queued QoS 1 messages while the device is away), keepalive
        body = _mqtt_string("MQTT") + bytes((4, 0)) + self.keepalive_s.to_bytes(2, "big")
        body += _mqtt_string(self.client_id)
        self.transport.write(b"\x10" + mqtt_length(len(body)) + body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if not self.subscribed.done():
            self.subscribed.set_exception(SimNetError(f"[simnet] MQTT connection closed{f': {exc}' if exc else ''}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._read_packets()
        except SimNetError as exc:
            if not self.subscribed.done():
                self.subscribed.set_exception(exc)
            self.close()

    def _read_packets(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            length, shift, pos = 0, 0, 1
            while True:
                if pos >= len(buf):
                    return
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise SimNetError("[simnet] MQTT remaining length longer than 4 bytes")
            if len(buf) < pos + length:
                return
            kind, body = buf[0], bytes(buf[pos:pos + length])
            del buf[:pos + length]
            self._on_packet(kind, body)

    def _on_packet(self, kind: int, body: bytes) -> None:
        packet = kind >> 4
        if packet == 2:  # CONNACK
            if len(body) != 2 or body[1] != 0:
                raise SimNetError(f"[simnet] MQTT broker refused the connection (return code "
                                  f"{body[1] if len(body) == 2 else '?'})")
            payload = b"".join(_mqtt_string(t) + b"\x01" for t in self.topics)
            body = (1).to_bytes(2, "big") + payload
            self._write(b"\x82" + mqtt_length(len(body)) + body)
            self._schedule_ping()
        elif packet == 9:  # SUBACK
            if len(body) != 2 + len(self.topics) or any(code == 0x80 for code in body[2:]):
                raise SimNetError("[simnet] MQTT broker refused a subscription")
            if not self.subscribed.done():
                self.subscribed.set_result(None)
        elif packet == 3:  # PUBLISH
            qos = (kind >> 1) & 0x03
            if len(body) < 2:
                raise SimNetError("[simnet] MQTT PUBLISH too short")
            n = int.from_bytes(body[:2], "big")
            topic, offset = body[2:2 + n].decode("utf-8", "replace"), 2 + n
            if qos:
                packet_id = body[offset:offset + 2]
                offset += 2
                self._write(b"\x40\x02" + packet_id)  # PUBACK (QoS 2 is never subscribed to)
            self.on_publish(topic, body[offset:])
        # PINGRESP (13) and anything else needs no answer

    def _schedule_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping = loop.call_later(self.keepalive_s * 0.75, self._send_ping)

    def _send_ping(self) -> None:
        self._write(b"\xc0\x00")
        self._schedule_ping()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.transport is not None:
            self._write(b"\xe0\x00")  # DISCONNECT
            self.transport.close()


async def open_mqtt(host: str, port: int, client_id: str, topics: list[str],
                    on_publish: Callable[[str, bytes], None], timeout_s: float = 30.0) -> MqttSubscriber:
    """Connect and subscribe; raises :class:`SimNetError` (or ``OSError``) when that fails."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: MqttSubscriber(client_id, topics, on_publish), host, port), timeout_s)
    try:
        await asyncio.wait_for(asyncio.shield(client.subscribed), timeout_s)
    except BaseException:
        client.close()
        raise
    return client
