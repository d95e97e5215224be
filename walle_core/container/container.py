"""The compute container: many tasks, a few worker threads, one shared engine.

Worker threads take runs from a bounded priority queue. Thread-mode runs execute in the
worker itself (their heavy work is in native kernels that release the GIL); process-mode
runs are handed to a worker process of :class:`ProcessPool` while the thread waits. A
watchdog thread enforces thread-mode timeouts and cancels (see ``interrupt``) and replaces
a worker thread whose task refuses to stop, so the container keeps its capacity.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from walle_core.container.interrupt import interrupt
from walle_core.container.jobs import JobQueue, TaskHandle
from walle_core.container.process import ProcessPool
from walle_core.container.runner import Outcome, TaskResources, run_once
from walle_core.container.stats import ContainerStats
from walle_core.container.task import ModelCache, Task, load_task

#: how long a stopped thread-mode task may take to unwind before its worker is given up on;
#: the interrupt lands at the next Python line, so only a native call or a task that
#: swallows TaskCancelled comes near this
GRACE_S = 1.0


def default_state_dir() -> Path:
    """``$WALLE_STATE_DIR``, else the XDG state directory (``~/.local/state/walle``)."""
    if os.environ.get("WALLE_STATE_DIR"):
        return Path(os.environ["WALLE_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "walle" / "tasks"


class _Worker:
    def __init__(self, container: Container, index: int) -> None:
        self.container = container
        self.current: TaskHandle | None = None
        self.retired = False  # set when the watchdog gave up on this thread's task
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"walle-task-worker-{index}", daemon=True)

    def _loop(self) -> None:
        while not self.retired:
            handle = self.container._queue.get()
            if handle is None:
                return
            self.container._execute(self, handle)

    def interrupt(self, handle: TaskHandle) -> bool:
        """Stop ``handle``'s Python code if this thread is still running it."""
        with self.lock:
            return self.current is handle and interrupt(self.thread)


class _Watchdog:
    """Deadlines of running thread-mode runs: first stop the task, then, ``GRACE_S`` later,
    give up on its worker thread."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self._entries: dict[TaskHandle, tuple[float, _Worker, bool]] = {}  # deadline, worker, stopping
        self._cond = threading.Condition()
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name="walle-task-watchdog", daemon=True)
        self.thread.start()

    def watch(self, handle: TaskHandle, worker: _Worker, deadline: float, stopping: bool = False) -> None:
        with self._cond:
            self._entries[handle] = (deadline, worker, stopping)
            self._cond.notify()

    def unwatch(self, handle: TaskHandle) -> None:
        with self._cond:
            self._entries.pop(handle, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [(h, e) for h, e in self._entries.items() if e[0] <= now]
                if not due:
                    wait = min((e[0] for e in self._entries.values()), default=now + 3600) - now
                    self._cond.wait(max(wait, 0.001))
                    continue
                for handle, _ in due:
                    del self._entries[handle]
            for handle, (_, worker, stopping) in due:
                if not stopping:
                    handle.request_stop("timeout")
                    worker.interrupt(handle)
                    self.watch(handle, worker, time.monotonic() + GRACE_S, stopping=True)
                else:
                    self.container._abandon(worker, handle)


class Container:
    """Runs tasks concurrently and in isolation; see docs/tasks.md.

    ``workers`` threads run tasks; ``process_workers`` (default: ``workers``) processes are
    started the first time a process-mode task is loaded. ``queue_size`` bounds the runs
    waiting; ``submit`` blocks (or raises ``QueueFull``) beyond it. ``state_dir`` holds each
    task's key-value store and scratch directory across restarts."""

    def __init__(self, workers: int = 2, state_dir: str | Path | None = None, queue_size: int = 64,
                 backend: str = "auto", process_workers: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"[container] workers must be >= 1, got {workers}")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self._models = ModelCache(backend)
        self._queue = JobQueue(queue_size)
        self._stats = ContainerStats()
        self._lock = threading.Lock()
        self._tasks: dict[Path, Task] = {}
        self._resources: dict[str, TaskResources] = {}
        self._process_workers = process_workers or workers
        self._pool: ProcessPool | None = None
        self._abandoned = 0
        self._closed = False
        self._watchdog = _Watchdog(self)
        self._workers = [self._start_worker(i) for i in range(workers)]

    # -- public API ---------------------------------------------------------------------------
    def load(self, directory: str | Path) -> Task:
        """The task in ``directory``, loaded once and cached (models shared between tasks)."""
        key = Path(directory).resolve()
        with self._lock:
            task = self._tasks.get(key)
        if task is None:
            task = load_task(key, models=self._models)
            with self._lock:
                task = self._tasks.setdefault(key, task)
        if task.mode == "process":
            self._process_pool()
        return task

    def submit(self, task: Task | str | Path, inputs: Mapping[str, Any] | None = None, priority: int = 0,
               block: bool = True, timeout: float | None = None) -> TaskHandle:
        """Queue one run of ``task`` (a loaded :class:`Task` or a task directory). Higher
        ``priority`` runs first. Blocks while the queue is full, up to ``timeout`` seconds,
        or raises ``QueueFull`` at once with ``block=False``."""
        if self._closed:
            raise RuntimeError("[container] submit() on a closed container")
        if not isinstance(task, Task):
            task = self.load(task)
        elif task.mode == "process":
            self._process_pool()
        if inputs is not None and not isinstance(inputs, Mapping):
            raise TypeError(f"[container] inputs must be a mapping of name -> value, got {type(inputs).__name__}")
        handle = TaskHandle(task, dict(inputs or {}), int(priority), self._cancel)
        self._queue.put(handle, block=block, timeout=timeout)
        return handle

    def stats(self) -> dict[str, Any]:
        """Queued and running counts, finished runs per status, and per-task run counts and
        latency percentiles (of successful runs, in ms)."""
        snapshot = self._stats.snapshot(len(self._queue))
        snapshot["workers"] = len(self._workers)
        snapshot["abandoned_threads"] = self._abandoned
        snapshot["replaced_processes"] = self._pool.replaced if self._pool is not None else 0
        return snapshot

    def close(self) -> None:
        """Run what is queued, then stop the workers and release every resource."""
        if self._closed:
            return
        self._closed = True
        self._queue.close()
        while True:
            with self._lock:
                live = [w for w in self._workers if not w.retired and w.thread.is_alive()]
            if not live:
                break
            live[0].thread.join(0.1)
        self._watchdog.close()
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for resources in self._resources.values():
                resources.close()
            for task in self._tasks.values():
                task.close()
            self._resources.clear()
            self._tasks.clear()

    def __enter__(self) -> Container:  # noqa: PYI034 (typing.Self needs 3.11)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _start_worker(self, index: int) -> _Worker:
        worker = _Worker(self, index)
        worker.thread.start()
        return worker

    def _process_pool(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(self._process_workers, self.state_dir, self.backend)
            return self._pool

    def _resources_for(self, task: Task) -> TaskResources:
        with self._lock:
            resources = self._resources.get(task.name)
            if resources is None:
                resources = self._resources[task.name] = TaskResources(self.state_dir, task.name)
            return resources

    def _execute(self, worker: _Worker, handle: TaskHandle) -> None:
        if not handle.mark_running():  # cancelled while queued
            return
        self._stats.started()
        task, limits = handle.task, handle.task.spec.limits
        with worker.lock:
            worker.current = handle
        try:
            if task.mode == "process":
                outcome = self._process_pool().run(task.spec.directory, handle.inputs, limits.timeout_s,
                                                   limits.memory_mb, handle.cancel_token)
            else:
                if limits.timeout_s is not None:
                    self._watchdog.watch(handle, worker, time.monotonic() + limits.timeout_s)
                outcome = run_once(task, self._resources_for(task), handle.inputs, handle.cancel_token)
        except Exception as exc:  # noqa: BLE001 -- the container's own failure (e.g. closed mid-run): report it
            outcome = Outcome("error", message=f"the container could not run the task: {exc}")
        finally:
            with worker.lock:
                worker.current = None
            self._watchdog.unwatch(handle)
        status, message = outcome.status, outcome.message
        if status == "cancelled":
            status = handle.stop_reason or "cancelled"
        if status == "timeout" and task.mode == "thread":
            message = f"stopped at its limits.timeout_s = {limits.timeout_s} s"
        self._finish(handle, status, outcome.result, message, outcome.traceback)

    def _finish(self, handle: TaskHandle, status: str, result: dict[str, Any] | None = None,
                message: str = "", traceback: str = "") -> None:
        was_running = handle.status == "running"
        if handle.finish(status, result, message, traceback):
            self._stats.finished(handle.name, status, handle.latency_s, was_running)

    def _cancel(self, handle: TaskHandle) -> None:
        if self._queue.remove(handle):
            handle.request_stop("cancelled")
            self._finish(handle, "cancelled", message="cancelled before it started")
            return
        if not handle.request_stop("cancelled") or handle.task.mode == "process":
            return  # already stopping, or the process pool sees cancel_event and kills the worker
        with self._lock:
            worker = next((w for w in self._workers if w.current is handle), None)
        if worker is not None:
            worker.interrupt(handle)
            self._watchdog.watch(handle, worker, time.monotonic() + GRACE_S, stopping=True)

    def _abandon(self, worker: _Worker, handle: TaskHandle) -> None:
        """The task ignored its stop: report it, and replace its thread (left to finish alone)."""
        with worker.lock:
            if worker.current is not handle:
                return  # it did stop, just late
            worker.retired = True
        reason = handle.stop_reason or "timeout"
        self._finish(handle, reason, message=f"did not stop within {GRACE_S} s of being told to "
                                             "(it is in a native call or swallowed TaskCancelled); "
                                             "its worker thread was replaced")
        with self._lock:
            self._abandoned += 1
            self._workers.remove(worker)
            if not self._closed:
                self._workers.append(self._start_worker(len(self._workers) + self._abandoned))
