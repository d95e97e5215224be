"""Where events come from: JSONL files (resumable by byte offset) and a bounded queue.

(The third source, ``StreamEngine.push``, is a method of the engine itself.)
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, offset: int = 0) -> Iterator[tuple[bytes, int]]:
    """Yield ``(line, offset after the line)`` from byte ``offset`` on. Offsets are byte
    positions, so a restart seeks straight to the first unprocessed line."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        position = offset
        for line in handle:
            position += len(line)
            if line.strip():
                yield line, position


class BoundedEventQueue:
    """A thread-safe queue between an app (producers) and the engine (one consumer).

    It is bounded so a stalled engine applies back-pressure instead of growing memory:
    ``put`` blocks (or, with ``block=False``, raises ``queue.Full``). ``close`` lets
    the consumer drain what is left and stop."""

    _CLOSED = object()

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize <= 0:
            raise ValueError("[stream] queue maxsize must be positive")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._closed = False  # the consumer has taken the close marker

    def put(self, event: Any, block: bool = True, timeout: float | None = None) -> None:
        self._queue.put(event, block, timeout)

    def close(self) -> None:
        self._queue.put(self._CLOSED)

    def get_batch(self, limit: int) -> list[Any] | None:
        """Wait for one item, then take up to ``limit`` in all of those already waiting; None
        once the queue is closed and drained (the engine's batched consumer)."""
        if limit <= 0:
            raise ValueError("[stream] get_batch limit must be positive")
        if self._closed:
            return None
        batch: list[Any] = []
        item = self._queue.get()
        while True:
            if item is self._CLOSED:
                self._closed = True
                break
            batch.append(item)
            if len(batch) >= limit:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return batch if batch else None

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._CLOSED:
                return
            yield item

    def qsize(self) -> int:
        return self._queue.qsize()
