"""``ctx``: everything a task's ``run(ctx, inputs)`` gets from the container.

A context is made per run (its cancel flag and memory account belong to that run); the
models, logger, scratch directory and key-value store behind it belong to the task and are
shared by all its runs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from walle_core.cancel import CancelToken
from walle_core.container.accounting import MemoryAccount
from walle_core.container.errors import TaskCancelled
from walle_core.container.kv import KVStore
from walle_core.errors import RunCancelled

if TYPE_CHECKING:
    from walle_core.session import Session


class AccountedModel:
    """A task's view of a shared, read-only :class:`~walle_core.session.Session`: ``run``
    checks the cancel flag first and counts the returned arrays against the task's memory."""

    def __init__(self, name: str, session: Session, account: MemoryAccount, cancel: CancelToken) -> None:
        self.name = name
        self.session = session
        self._account = account
        self._cancel = cancel

    @property
    def inputs(self) -> list[Any]:
        return self.session.inputs

    @property
    def output_names(self) -> list[str]:
        return self.session.output_names

    def run(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if self._cancel.cancelled:
            raise TaskCancelled(f"model {self.name!r} not run: the task was cancelled")
        try:
            outputs = self.session.run(feeds, output_names, cancel=self._cancel)
        except RunCancelled as exc:
            raise TaskCancelled(f"model {self.name!r} stopped mid-run: {exc}") from None
        for out_name, array in outputs.items():
            self._account.track(array, f"output {out_name!r} of model {self.name!r}")
        return outputs


class TaskContext:
    """The ``ctx`` argument of a task's ``run``."""

    def __init__(self, name: str, models: Mapping[str, Session], config: Mapping[str, Any], kv: KVStore,
                 scratch: Path, account: MemoryAccount, cancel: CancelToken) -> None:
        self.name = name
        #: the task's ``[config]`` table; a private copy per run, so runs cannot leak state through it
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        self.log = logging.getLogger(f"walle.task.{name}")
        self.kv = kv
        self.scratch = scratch
        self.memory = account
        self._models = models
        self._cancel = cancel

    @property
    def cancelled(self) -> bool:
        """True once the run is past its timeout or was cancelled; long loops may poll it."""
        return self._cancel.cancelled

    def model(self, name: str) -> AccountedModel:
        if name not in self._models:
            raise KeyError(f"[container] task {self.name!r} has no model {name!r}; it has {sorted(self._models)}")
        return AccountedModel(name, self._models[name], self.memory, self._cancel)

    def alloc(self, shape: int | Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """A zeroed array counted against ``limits.memory_mb`` (checked before allocating)."""
        dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"[container] ctx.alloc: negative dimension in {dims}")
        dt = np.dtype(dtype)
        nbytes = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
        self.memory.reserve(nbytes, f"ctx.alloc{dims}")
        try:
            array = np.zeros(dims, dt)
        except BaseException:
            self.memory.release(nbytes)
            raise
        return self.memory.attach(array, nbytes)
