"""The embedded push channel: devices keep a WebSocket to the server itself.

Nothing to install or run besides the server, which makes it the default; one server
process holds tens of thousands of idle sockets (see the README for measured memory per
connection). Device reports and heartbeats travel back over the same socket, which saves
an HTTP request per state change.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Protocol

from walle_deploy.push import PushChannel

log = logging.getLogger("walle_deploy.server")


class DeviceSocket(Protocol):
    """What the hub needs of a device's WebSocket (``server.hotpaths.PushSocket``)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000) -> None: ...


class EmbeddedHub(PushChannel):
    name = "embedded"
    per_device = True

    def __init__(self) -> None:
        self._sockets: dict[str, DeviceSocket] = {}

    def attach(self, device_id: str, ws: DeviceSocket) -> DeviceSocket | None:
        """Register a device's socket; returns the socket it replaces (a reconnect), if any."""
        old = self._sockets.get(device_id)
        self._sockets[device_id] = ws
        return old

    def detach(self, device_id: str, ws: DeviceSocket) -> None:
        if self._sockets.get(device_id) is ws:
            del self._sockets[device_id]

    def is_connected(self, device_id: str) -> bool:
        return device_id in self._sockets

    def connected_count(self) -> int:
        return len(self._sockets)

    async def send(self, device_id: str, message: dict[str, Any]) -> bool:
        ws = self._sockets.get(device_id)
        if ws is None:
            return False
        try:
            await ws.send_text(json.dumps(message))
        except (RuntimeError, OSError) as exc:  # the socket died after the check; it will reconnect
            log.debug("[deploy] push to %s failed: %s", device_id, exc)
            self.detach(device_id, ws)
            return False
        return True

    async def close(self) -> None:
        for ws in list(self._sockets.values()):
            with contextlib.suppress(RuntimeError, OSError):  # already closed by the peer
                await ws.close(code=1001)
        self._sockets.clear()
