"""Exceptions of the compute container.

``TaskError`` is about a task *directory* (rejected at load, before anything runs);
``TaskFailed`` is about one *run* of a task (what ``TaskHandle.result`` raises). The two
interrupt types derive from ``BaseException`` on purpose: task code written as
``except Exception:`` must not swallow a timeout or a memory-limit stop.
"""

from __future__ import annotations

from walle_core.errors import WalleError

#: every final status of a run; "ok" is the only one that is not a failure
STATUSES = ("ok", "error", "timeout", "memory", "crash", "cancelled")


class TaskError(WalleError):
    """A task directory is invalid. ``path`` is the file at fault, ``field`` the key in it
    (dotted, e.g. ``limits.timeout_s``) or ``None`` when the whole file is at fault."""

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        where = f"{path}: field {field!r}" if field else str(path)
        super().__init__(f"[container] {where}: {problem}")
        self.path = str(path)
        self.field = field
        self.problem = problem


class TaskFailed(WalleError):
    """A run did not complete. ``status`` is one of ``STATUSES`` other than "ok";
    ``traceback`` is the task's own traceback text (empty when there is none, e.g. a crash)."""

    def __init__(self, task: str, status: str, message: str, traceback: str = "") -> None:
        super().__init__(f"[container] task {task!r} {status}: {message}")
        self.task = task
        self.status = status
        self.message = message
        self.traceback = traceback


class QueueFull(WalleError):
    """``submit(..., block=False)`` found the container's queue full (back-pressure)."""


class TaskCancelled(BaseException):
    """Raised inside a task's thread to stop it (timeout or ``handle.cancel()``)."""


class TaskMemoryExceeded(BaseException):
    """Raised inside a task when its accounted memory would pass ``limits.memory_mb``."""
