"""Per-task memory accounting for thread mode.

Threads share one heap, so the container cannot see which thread allocated a Python
object (tracemalloc is process-wide and slows every allocation). What it *can* see is the
memory that passes through the task's context: arrays returned by ``ctx.model(...).run``
and arrays made with ``ctx.alloc``. Those are counted while alive (a weakref finaliser
gives the bytes back when the array is freed), and the allocation that would pass the
task's ``memory_mb`` raises :class:`TaskMemoryExceeded` instead.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from walle_core.container.errors import TaskMemoryExceeded


class MemoryAccount:
    """Live and peak bytes of one run; thread-safe (tasks may start their own threads)."""

    def __init__(self, task: str, limit_bytes: int | None) -> None:
        self.task = task
        self.limit_bytes = limit_bytes
        self.live = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more, or raise if that would pass the limit (nothing counted)."""
        with self._lock:
            if self.limit_bytes is not None and self.live + nbytes > self.limit_bytes:
                raise TaskMemoryExceeded(
                    f"task {self.task!r}: {what} needs {nbytes / 2**20:.1f} MiB with "
                    f"{self.live / 2**20:.1f} MiB already held; limit is {self.limit_bytes / 2**20:.1f} MiB")
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes

    def track(self, array: np.ndarray, what: str) -> np.ndarray:
        """Count an existing array until it is garbage-collected."""
        nbytes = int(array.nbytes)
        self.reserve(nbytes, what)
        return self.attach(array, nbytes)

    def attach(self, array: np.ndarray, nbytes: int) -> np.ndarray:
        """Give ``nbytes`` (already reserved) back when ``array``'s buffer is freed."""
        owner = array if array.base is None else array.base
        try:
            weakref.finalize(owner, self.release, nbytes)
        except TypeError:  # the buffer owner cannot be weakly referenced: count it for the run
            pass
        return array
