"""Counters and latency percentiles of a container, safe to update from any worker."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from walle_core.container.errors import STATUSES

#: latencies kept per task: enough for stable p99s, bounded for long-lived containers
WINDOW = 4096


def percentiles_ms(latencies_s: list[float] | deque[float]) -> dict[str, float]:
    if not latencies_s:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(ms.mean()), 3)}


class ContainerStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.done = dict.fromkeys(STATUSES, 0)
        self._latency: dict[str, deque[float]] = {}
        self._per_task: dict[str, dict[str, int]] = {}

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def finished(self, task: str, status: str, latency_s: float | None, was_running: bool) -> None:
        with self._lock:
            if was_running:
                self.running -= 1
            self.done[status] += 1
            self._per_task.setdefault(task, dict.fromkeys(STATUSES, 0))[status] += 1
            if status == "ok" and latency_s is not None:
                self._latency.setdefault(task, deque(maxlen=WINDOW)).append(latency_s)

    def snapshot(self, queued: int) -> dict[str, Any]:
        with self._lock:
            tasks = {
                name: {"runs": dict(counts), "latency_ms": percentiles_ms(list(self._latency.get(name, ())))}
                for name, counts in self._per_task.items()
            }
            return {"queued": queued, "running": self.running, "done": dict(self.done), "tasks": tasks}
