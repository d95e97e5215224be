"""Stopping a Python thread from another thread, without ctypes.

A worker runs every task under a global trace function that does nothing (``sys.settrace``
with a tracer returning ``None``: the interpreter then also dispatches per-frame trace
functions, at a small cost per Python call). To stop the task, another thread sets
``f_trace`` on each of the worker's frames that belong to the task (found through
``sys._current_frames()``); at that frame's next line event the interpreter calls the
tracer, which raises :class:`TaskCancelled`. A ``while True: pass`` loop produces a line
event on every backward jump, so it is stopped within one iteration.

Limits (documented in docs/tasks.md): a native call (a kernel, ``time.sleep``) is only
interrupted when it returns to Python; raising from a tracer turns tracing off for that
thread, so a task that catches ``BaseException`` and keeps looping cannot be stopped again.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from walle_core.container.errors import TaskCancelled


def _quiet_tracer(frame: FrameType, event: str, arg: Any) -> None:
    return None


def _cancelling_tracer(frame: FrameType, event: str, arg: Any) -> None:
    raise TaskCancelled("the task was stopped by the container (timeout or cancel)")


def call_interruptible(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function(*args)`` so that :func:`interrupt` can stop it. The frames of
    ``function`` and below are the task's; this frame is the boundary the watchdog stops at."""
    sys.settrace(_quiet_tracer)
    try:
        return function(*args)
    finally:
        sys.settrace(None)


def interrupt(thread: threading.Thread) -> bool:
    """Arrange for ``thread``'s task code to raise :class:`TaskCancelled`. Returns False when
    the thread is not inside :func:`call_interruptible`. The caller must make sure the thread
    is still running the task it means to stop (see ``Worker.interrupt``)."""
    frame = sys._current_frames().get(thread.ident or -1)
    task_frames = []
    while frame is not None and frame.f_code is not call_interruptible.__code__:
        task_frames.append(frame)
        frame = frame.f_back
    if frame is None:
        return False
    for task_frame in task_frames:
        task_frame.f_trace_lines = True
        task_frame.f_trace = _cancelling_tracer
    return True
