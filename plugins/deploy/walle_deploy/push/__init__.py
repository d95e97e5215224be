"""Push channels: how the server tells devices that something new is waiting to be pulled.

Two shapes behind one interface, chosen by ``per_device``:

* per-device channels (the embedded WebSocket hub) deliver a notice to one connected
  device; the server decides who gets what and paces the sends (rate limit);
* broadcast channels (MQTT) publish one retained manifest per group topic; each device
  evaluates the release policy itself, offline devices get the retained manifest when they
  reconnect, and the rate limit becomes a spread window devices draw their start time from.

Either way a notice is small (task, version, digest, bundle URL); bundles are always pulled
over HTTP, never pushed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class PushChannel(ABC):
    #: short name shown in reports ("embedded", "mqtt")
    name: str = ""
    #: True: the server sends each device its notices; False: the channel broadcasts manifests
    per_device: bool = True

    async def start(self) -> None:
        """Called once when the server starts (connect to a broker, ...)."""

    async def close(self) -> None:
        """Called once when the server stops."""

    @abstractmethod
    def is_connected(self, device_id: str) -> bool:
        """Whether a notice sent now would reach the device (always True for broadcast)."""

    @abstractmethod
    def connected_count(self) -> int:
        """Devices currently connected, or -1 when the channel cannot tell (broker-side)."""

    async def send(self, device_id: str, message: dict[str, Any]) -> bool:
        """Deliver one message to one device; False when it is not connected. Per-device only."""
        raise NotImplementedError(f"[deploy] the {self.name} push channel does not send per-device messages")

    async def publish_manifests(self, manifests: dict[str, list[dict[str, Any]]]) -> None:
        """Replace the retained manifest of every group (``"all"`` included). Broadcast only."""
        raise NotImplementedError(f"[deploy] the {self.name} push channel does not publish manifests")
