"""What happens when a trigger fires: the sink interface and the simple sinks.

A sink gets ``on_fire(task_name, key, features, event)`` on the engine's thread, right
after the event that completed the match; a slow sink slows the stream, so heavy work
belongs in the compute container (see :mod:`walle_stream.container`).

Delivery is at-least-once across crashes: firings are recorded durably with the state,
but the ones after the last commit are delivered again when a killed process replays
the events after the saved offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class FireSink(Protocol):
    def on_fire(self, task_name: str, key: str, features: dict[str, Any], event: Any) -> None: ...


class CallbackSink:
    """Adapts a plain function to the sink interface."""

    def __init__(self, callback: Callable[[str, str, dict[str, Any], Any], None]) -> None:
        self.callback = callback

    def on_fire(self, task_name: str, key: str, features: dict[str, Any], event: Any) -> None:
        self.callback(task_name, key, features, event)


class ListSink:
    """Collects firings as ``(task_name, key, features, event)`` tuples (tests, demos)."""

    def __init__(self) -> None:
        self.fires: list[tuple[str, str, dict[str, Any], Any]] = []

    def on_fire(self, task_name: str, key: str, features: dict[str, Any], event: Any) -> None:
        self.fires.append((task_name, key, features, event))
