"""Wall-clock measurement of repeated runs, shared by `walle bench` and `walle demo`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


def time_runs(fn: Callable[[], Any], warmup: int, runs: Iterable[int]) -> list[float]:
    """Milliseconds of each call of ``fn`` over ``runs``, after ``warmup`` untimed calls
    (the first calls pay for lazy planning and cold caches)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in runs:
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    """Median, 90th percentile (nearest rank) and minimum, in ms."""
    ordered = sorted(samples_ms)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    p90 = ordered[min(n - 1, max(0, -(-9 * n // 10) - 1))]
    return {"median_ms": round(median, 4), "p90_ms": round(p90, 4), "min_ms": round(ordered[0], 4)}
