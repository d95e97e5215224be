"""Hand-off to the compute container: a sink that submits the fired task.

The task runs with its features as inputs (``inputs[name]`` per declared feature) plus
``inputs["event"]``, the event that completed the match, as a dict. Submission blocks
while the container's queue is full, which is the back-pressure that keeps a burst of
firings from growing memory without bound. Results are collected by :meth:`collect`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from walle_core.container import TaskFailed
from walle_stream.errors import StreamConfigError
from walle_stream.tasks import StreamTask

#: the input name under which a task receives the completing event
EVENT_INPUT = "event"


class ContainerSink:
    """Submits each firing to a ``walle_core.container.Container``. Only tasks loaded from
    a directory can be submitted; the container loads each one once and caches it."""

    def __init__(self, container: Any, tasks: Iterable[StreamTask], keep_results: int = 1000) -> None:
        self.container = container
        self.paths = {}
        for task in tasks:
            if task.path is None:
                raise StreamConfigError(f"[stream] task '{task.name}' has no directory; the container "
                                        "can only run tasks loaded from a task directory")
            if any(spec.name == EVENT_INPUT for spec in task.features):
                raise StreamConfigError(f"[stream] task '{task.name}': a feature may not be called "
                                        f"'{EVENT_INPUT}' (that input carries the firing event)")
            self.paths[task.name] = task.path
        self.keep_results = keep_results
        self.pending: list[Any] = []
        self.statuses: dict[str, Counter[str]] = {name: Counter() for name in self.paths}
        self.results: list[tuple[str, str, Any]] = []  # (task, key, result dict or error text)
        self._keys: dict[int, str] = {}

    def on_fire(self, task_name: str, key: str, features: dict[str, Any], event: Any) -> None:
        path = self.paths.get(task_name)
        if path is None:
            return  # a task added to the engine later without a directory: nothing to run
        handle = self.container.submit(path, {**features, EVENT_INPUT: event.to_dict()})
        self._keys[id(handle)] = key
        self.pending.append(handle)
        if len(self.pending) >= 256:
            self._reap()

    def collect(self, timeout: float = 60.0) -> dict[str, dict[str, int]]:
        """Wait for every submitted run (up to ``timeout`` s in total); returns per task the
        number of runs by final status (``unfinished`` for those still running)."""
        deadline = time.monotonic() + timeout
        for handle in self.pending:
            handle.wait(max(0.0, deadline - time.monotonic()))
        self._reap()
        out = {name: dict(counts) for name, counts in self.statuses.items()}
        for handle in self.pending:
            out[handle.name]["unfinished"] = out[handle.name].get("unfinished", 0) + 1
        return out

    def _reap(self) -> None:
        still = []
        for handle in self.pending:
            if not handle.done():
                still.append(handle)
                continue
            key = self._keys.pop(id(handle), "")
            try:
                outcome: Any = handle.result(0)
            except TaskFailed as exc:  # the run failed; its status says how
                outcome = str(exc)
            self.statuses[handle.name][handle.status] += 1
            if len(self.results) < self.keep_results:
                self.results.append((handle.name, key, outcome))
        self.pending = still
