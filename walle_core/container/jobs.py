"""Handles and the bounded priority queue that feeds the workers."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from walle_core.cancel import CancelToken
from walle_core.container.errors import QueueFull, TaskFailed

if TYPE_CHECKING:
    from walle_core.container.task import Task

FINAL = ("ok", "error", "timeout", "memory", "crash", "cancelled")


class TaskHandle:
    """One submitted run. ``status`` moves queued -> running -> one of ``FINAL``; the first
    final status wins (a watchdog and a worker may both try to finish a run)."""

    def __init__(self, task: Task, inputs: dict[str, Any], priority: int,
                 on_cancel: Callable[[TaskHandle], None]) -> None:
        self.task = task
        self.inputs = inputs
        self.priority = priority
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None
        self.latency_s: float | None = None
        #: cancelled when the run should stop; the task sees it as ``ctx.cancelled`` and native
        #: kernels of the models it runs stop between blocks of work
        self.cancel_token = CancelToken()
        self.stop_reason = ""  # "timeout" or "cancelled" once cancel_token is cancelled
        self._status = "queued"
        self._result: dict[str, Any] | None = None
        self._failure: TaskFailed | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._on_cancel = on_cancel

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def status(self) -> str:
        return self._status

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run has finished (any status); False if ``timeout`` passed first."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The task's returned dict; raises :class:`TaskFailed` if the run failed and
        ``TimeoutError`` if it has not finished within ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"[container] task {self.name!r} still {self._status} after {timeout} s")
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        return self._result

    def cancel(self) -> bool:
        """Stop the run: a queued run never starts, a running one is interrupted. Returns
        False if the run had already finished."""
        if self.done():
            return False
        self._on_cancel(self)
        return True

    # -- used by the container ------------------------------------------------------------
    def request_stop(self, reason: str) -> bool:
        with self._lock:
            if self.cancel_token.cancelled or self._done.is_set():
                return False
            self.stop_reason = reason
            self.cancel_token.cancel()
            return True

    def mark_running(self) -> bool:
        with self._lock:
            if self._status != "queued":
                return False
            self._status = "running"
            self.started_at = time.perf_counter()
            return True

    def finish(self, status: str, result: dict[str, Any] | None = None, message: str = "",
               traceback: str = "") -> bool:
        with self._lock:
            if self._done.is_set():
                return False
            if self.started_at is not None:
                self.latency_s = time.perf_counter() - self.started_at
            self._status = status
            if status == "ok":
                self._result = result
            else:
                self._failure = TaskFailed(self.name, status, message, traceback)
            self._done.set()
            return True


class JobQueue:
    """A bounded priority queue: higher ``priority`` first, FIFO within a priority. ``put``
    blocks while full (back-pressure) or raises :class:`QueueFull`."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"[container] queue_size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._heap: list[tuple[int, int, TaskHandle]] = []
        self._seq = itertools.count()
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def put(self, handle: TaskHandle, block: bool = True, timeout: float | None = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("[container] the container is closed")
            if len(self._heap) >= self.maxsize:
                if not block:
                    raise QueueFull(f"[container] queue full ({self.maxsize} runs waiting)")
                if not self._cond.wait_for(lambda: len(self._heap) < self.maxsize or self._closed, timeout):
                    raise QueueFull(f"[container] queue still full after {timeout} s")
                if self._closed:
                    raise RuntimeError("[container] the container is closed")
            heapq.heappush(self._heap, (-handle.priority, next(self._seq), handle))
            self._cond.notify_all()

    def get(self) -> TaskHandle | None:
        """The next run, or None once the queue is closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._heap or self._closed)
            if not self._heap:
                return None
            handle = heapq.heappop(self._heap)[2]
            self._cond.notify_all()
            return handle

    def remove(self, handle: TaskHandle) -> bool:
        with self._cond:
            for i, item in enumerate(self._heap):
                if item[2] is handle:
                    self._heap.pop(i)
                    heapq.heapify(self._heap)
                    self._cond.notify_all()
                    return True
            return False

    def close(self) -> None:
        """No more puts; ``get`` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
