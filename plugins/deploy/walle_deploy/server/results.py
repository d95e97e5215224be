"""Task results reported by devices: the strict check of one report and the per-version
aggregate the admin status shows.

A device reports *cumulative* figures for one (task, version) since it started running that
version, so the server keeps only the latest report per (device, task, version): a lost or
repeated report loses nothing, and totals are plain sums of the latest reports. ``seq`` (a
counter the device increases per report) lets the server drop a report that arrives after a
newer one, which can happen when an HTTP retry overtakes the next report.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from walle_deploy.errors import DeployError

#: a report is a few hundred bytes; anything much larger is a bug or an abuse
MAX_RESULTS_BODY = 4 << 10
MAX_COUNT = 10**15
MAX_LATENCY_MS = 1e9
MAX_BACKEND_CHARS = 64
METRIC_KEYS = frozenset({"inferences", "errors", "latency_ms", "backend"})
BODY_KEYS = frozenset({"type", "task", "version", "seq", "metrics"})


@dataclass
class ResultRecord:
    """The latest report of one device for one task version."""

    device: str
    task: str
    version: str
    seq: int
    inferences: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    backend: str
    updated: float


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = data.get(key, 0)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise DeployError(f"[deploy] results: '{where}{key}' must be a non-negative integer")
    return value


def _latency(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_LATENCY_MS:
        raise DeployError(f"[deploy] results: 'metrics.latency_ms.{key}' must be a number in [0, {MAX_LATENCY_MS:g}]")
    return float(value)


def parse_metrics(metrics: Any) -> tuple[int, int, float | None, float | None, str]:
    """``(inferences, errors, p50_ms, p99_ms, backend)`` from a report's ``metrics`` object,
    or a :class:`DeployError` naming the first bad field. Unknown keys are refused so a
    misspelt field is an error, not a silently missing figure."""
    if not isinstance(metrics, dict):
        raise DeployError("[deploy] results: 'metrics' must be an object")
    unknown = sorted(set(metrics) - METRIC_KEYS)
    if unknown:
        raise DeployError(f"[deploy] results: unknown field 'metrics.{unknown[0]}' "
                          f"(allowed: {', '.join(sorted(METRIC_KEYS))})")
    if "inferences" not in metrics:
        raise DeployError("[deploy] results: 'metrics.inferences' is required")
    inferences, errors = _count(metrics, "inferences", "metrics."), _count(metrics, "errors", "metrics.")
    p50 = p99 = None
    latency = metrics.get("latency_ms")
    if latency is not None:
        if not isinstance(latency, dict) or set(latency) != {"p50", "p99"}:
            raise DeployError("[deploy] results: 'metrics.latency_ms' must be {\"p50\": ms, \"p99\": ms} or null")
        p50, p99 = _latency(latency["p50"], "p50"), _latency(latency["p99"], "p99")
        if p50 > p99:
            raise DeployError("[deploy] results: 'metrics.latency_ms.p50' is larger than 'p99'")
    backend = metrics.get("backend", "")
    if not isinstance(backend, str) or len(backend) > MAX_BACKEND_CHARS or not backend.isprintable():
        raise DeployError(f"[deploy] results: 'metrics.backend' must be a printable string of at most "
                          f"{MAX_BACKEND_CHARS} characters")
    return inferences, errors, p50, p99, backend


def aggregate(records: list[ResultRecord]) -> dict[str, dict[str, Any]]:
    """Per version: devices reporting, summed inferences and errors, and latency across
    devices. p50 is the **median of the devices' p50**, a typical device's typical latency;
    p99 is the **maximum of the devices' p99**, the worst tail any device saw. Neither is the
    fleet-wide percentile (that would need every sample), but both are honest bounds that
    need only a few numbers per device."""
    by_version: dict[str, list[ResultRecord]] = {}
    for record in records:
        by_version.setdefault(record.version, []).append(record)
    out: dict[str, dict[str, Any]] = {}
    for version, rows in by_version.items():
        p50s = [r.p50_ms for r in rows if r.p50_ms is not None]
        p99s = [r.p99_ms for r in rows if r.p99_ms is not None]
        backends = Counter(r.backend for r in rows if r.backend)
        out[version] = {
            "devices": len(rows),
            "inferences": sum(r.inferences for r in rows),
            "errors": sum(r.errors for r in rows),
            "latency_ms": {"p50": round(statistics.median(p50s), 3) if p50s else None,
                           "p99": round(max(p99s), 3) if p99s else None},
            "backends": dict(backends.most_common()),
        }
    return out
