"""Running one task once, in whatever thread or process the caller is: build ``ctx``, call
``run``, and turn every way it can end into a (status, result, message, traceback) outcome.
Shared by the thread workers and the process workers, so both report failures alike."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walle_core.cancel import CancelToken
from walle_core.container.accounting import MemoryAccount
from walle_core.container.context import TaskContext
from walle_core.container.errors import TaskCancelled, TaskMemoryExceeded
from walle_core.container.interrupt import call_interruptible
from walle_core.container.kv import KVStore
from walle_core.container.task import Task

_PACKAGE_DIR = str(Path(__file__).parent)
_INTERRUPT_FILE = str(Path(__file__).with_name("interrupt.py"))


@dataclass
class Outcome:
    status: str  # "ok", "error", "memory" or "cancelled" (the caller knows timeout from cancel)
    result: dict[str, Any] | None = None
    message: str = ""
    traceback: str = ""


class TaskResources:
    """What a task keeps across runs and restarts, under ``state_dir/<task name>/``."""

    def __init__(self, state_dir: Path, name: str) -> None:
        root = state_dir / name
        self.scratch = root / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.kv = KVStore(root / "kv.sqlite3")

    def close(self) -> None:
        self.kv.close()


def run_once(task: Task, resources: TaskResources, inputs: dict[str, Any],
             cancel: CancelToken | None = None) -> Outcome:
    """Run ``task`` on ``inputs`` in the calling thread; never raises for task failures."""
    if task.run_function is None:
        return Outcome("error", message=f"task {task.name!r} was not imported in this process")
    limit = task.spec.limits.memory_mb
    account = MemoryAccount(task.name, None if limit is None else int(limit * 2**20))
    ctx = TaskContext(task.name, task.models, task.spec.config, resources.kv, resources.scratch, account,
                      cancel if cancel is not None else CancelToken())
    try:
        result = call_interruptible(task.run_function, ctx, inputs)
    except TaskCancelled as exc:
        return Outcome("cancelled", message=str(exc), traceback=_task_traceback(exc))
    except (TaskMemoryExceeded, MemoryError) as exc:
        return Outcome("memory", message=str(exc) or type(exc).__name__, traceback=_task_traceback(exc))
    except BaseException as exc:  # noqa: BLE001 -- SystemExit too: a task must not stop its worker
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return Outcome("error", message=message, traceback=_task_traceback(exc))
    if not isinstance(result, dict):
        return Outcome("error", message=f"run() returned {type(result).__name__}, expected a dict")
    return Outcome("ok", result=result)


def _task_traceback(exc: BaseException) -> str:
    """The traceback from the task's own code down: the container's frames above the task
    and the interrupting tracer's frame below it are dropped."""
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and frames[0].filename.startswith(_PACKAGE_DIR):
        frames.pop(0)
    while frames and frames[-1].filename == _INTERRUPT_FILE:
        frames.pop()
    stack = "".join(traceback.StackSummary.from_list(frames).format())
    return "Traceback (most recent call last):\n" + stack + "".join(traceback.format_exception_only(type(exc), exc))
