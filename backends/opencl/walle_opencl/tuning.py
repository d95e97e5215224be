"""Local work-size auto-tuning, as MNN does it: time a few candidate work-group sizes per
(device, kernel, global size) once, keep the fastest, and remember the choice on disk.

The level comes from ``WALLE_OPENCL_TUNING``:

- ``none`` (default): no tuning; 1-D kernels use the lowering's group of 64, n-D kernels let the
  driver choose (NULL local size). Keeps compiles fast.
- ``fast``: a handful of candidates per launch.
- ``full``: a wider sweep.

Only launches whose local size the lowering left free are tuned (1-D element-wise kernels and n-D
kernels with no local size); kernels that require a fixed group (the tiled MATMUL) keep theirs.
A candidate must divide the global size (OpenCL 1.2 has no partial groups) and fit the device;
one the driver rejects is skipped. Choices are cached in ``$WALLE_CACHE_DIR/opencl/tuning.json``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: environment variable selecting the tuning level
TUNING_ENV = "WALLE_OPENCL_TUNING"
LEVELS = ("none", "fast", "full")
#: timed runs per candidate; the minimum is kept because a host timer only sees added noise
_REPEATS = 3
# Candidate group sizes: powers of two that cover common SIMD widths (8/16) and GPU wavefronts
# (32/64) up to the 256 work-items every OpenCL 1.2 GPU accepts; ``full`` also tries 512 and 1024.
_SIZES_1D = {"fast": (16, 32, 64, 128, 256), "full": (8, 16, 32, 64, 128, 256, 512, 1024)}
_SIZES_ND = {"fast": (4, 8, 16), "full": (1, 2, 4, 8, 16, 32, 64)}
_MAX_GROUP = {"fast": 256, "full": 1024}

_lock = threading.Lock()
#: how many launches have been tuned by measurement in this process (cache hits do not count)
tuning_runs = 0


def tuning_level() -> str:
    """The level from ``WALLE_OPENCL_TUNING`` (default ``none``); anything else is a clear error."""
    level = os.environ.get(TUNING_ENV, "none").strip().lower() or "none"
    if level not in LEVELS:
        raise ValueError(f"[opencl] {TUNING_ENV}={os.environ.get(TUNING_ENV)!r}: expected one of {', '.join(LEVELS)}")
    return level


def tuning_path(cache_dir: Path) -> Path:
    return cache_dir / "tuning.json"


def candidates(global_size: Sequence[int], level: str) -> list[list[int]]:
    """Local sizes worth timing for ``global_size`` at ``level`` (each divides the global size)."""
    if level == "none":
        return []
    if len(global_size) == 1:
        return [[s] for s in _SIZES_1D[level] if global_size[0] % s == 0]
    out: list[list[int]] = []

    def extend(prefix: list[int], dims: Sequence[int]) -> None:
        if not dims:
            group = 1
            for p in prefix:
                group *= p
            if group <= _MAX_GROUP[level]:
                out.append(prefix)
            return
        for s in _SIZES_ND[level]:
            if dims[0] % s == 0:
                extend(prefix + [s], dims[1:])

    extend([], list(global_size))
    return out


def _load(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, entries: dict[str, list[int]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(entries, sort_keys=True, indent=0), encoding="utf-8")
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError:
        pass  # a read-only cache only costs re-tuning next time


def tune_launches(launches: list[tuple], device_key: str, cache_dir: Path, level: str,
                  time_launch: Callable[[tuple], float | None]) -> list[tuple]:
    """Return ``launches`` with tuned local sizes.

    ``time_launch(launch)`` runs one launch (with its candidate local size) and returns seconds,
    or None when the device rejects it. Choices are looked up in and added to the disk cache.
    """
    global tuning_runs
    if level == "none":
        return launches
    path = tuning_path(cache_dir)
    with _lock:
        entries = _load(path)
        changed = False
        tuned: list[tuple] = []
        for launch in launches:
            kernel, args, global_size, local, label = launch
            free = not local or (len(global_size) == 1 and len(local) == 1)
            options = candidates(global_size, level) if free else []
            if not options:
                tuned.append(launch)
                continue
            key = f"{device_key}|{kernel}|{'x'.join(map(str, global_size))}|{level}"
            best = entries.get(key)
            if not (isinstance(best, list) and best in options + [[]]):
                best, best_time = list(local), time_launch(launch)
                for option in options:
                    seconds = time_launch((kernel, args, global_size, option, label))
                    if seconds is not None and (best_time is None or seconds < best_time):
                        best, best_time = option, seconds
                entries[key] = best
                changed = True
                tuning_runs += 1
            tuned.append((kernel, args, global_size, best, label))
        if changed:
            _store(path, entries)
    return tuned


def best_of(run: Callable[[], None]) -> float:
    """Minimum wall time of ``run`` over a few repeats, after one warm-up."""
    run()
    times = []
    for _ in range(_REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
