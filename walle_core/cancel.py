"""Cancellation of runs in flight.

A ``threading.Event`` is enough for Python code that polls it, but a native kernel runs with
the GIL released and cannot look at a Python object. ``CancelToken`` therefore also calls
back whoever subscribed when it is cancelled: a backend subscribes a setter of its own native
flag for the duration of one run, and its kernels poll that flag between blocks of work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from walle_core.errors import RunCancelled


class CancelToken:
    """A one-way flag: once cancelled it stays cancelled. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_id = 0

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Cancel, and call every subscribed callback once (in the calling thread)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the token is cancelled (at once if it already is).
        Returns a function that unsubscribes it."""
        with self._lock:
            if not self._cancelled:
                key = self._next_id
                self._next_id += 1
                self._callbacks[key] = callback
                return lambda: self._unsubscribe(key)
        callback()
        return lambda: None

    def _unsubscribe(self, key: int) -> None:
        with self._lock:
            self._callbacks.pop(key, None)

    def raise_if_cancelled(self, what: str) -> None:
        if self._cancelled:
            raise RunCancelled(f"{what} cancelled")
