"""How a device works through release notices, shared by the agent and the fleet simulator.

Per task only the newest waiting notice is kept and one is processed at a time: a device that
falls behind a burst of releases installs the latest one, not each in turn, and two notices of
one task never install concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from walle_deploy.bundle import DIGEST_RE
from walle_deploy.errors import TaskError
from walle_deploy.task import check_name, check_version

Notice = dict[str, Any]


class NoticeFields(NamedTuple):
    task: str
    version: str
    digest: str
    url: str
    release: int


def parse_notice(notice: Notice) -> NoticeFields:
    """The fields a device acts on, checked; raises TaskError (or KeyError for a missing one)."""
    task, version = check_name(notice["task"]), check_version(notice["version"])
    digest, url, release = notice["digest"], notice["url"], notice["release"]
    if not isinstance(digest, str) or not DIGEST_RE.match(digest) or not isinstance(url, str) \
            or type(release) is not int:
        raise TaskError("bad digest, url or release")
    return NoticeFields(task, version, digest, url, release)


class NoticeWorkers:
    """``process(notice)`` runs in one asyncio task per task name; an exception it lets through
    (a bug: expected failures are reported by ``process`` itself) goes to
    ``on_error(task, notice, exc)``, so a device never stalls silently."""

    def __init__(self, process: Callable[[Notice], Awaitable[None]],
                 on_error: Callable[[str, Notice, Exception], Awaitable[None]]) -> None:
        self._process = process
        self._on_error = on_error
        self._latest: dict[str, Notice] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, Any] = {}

    def submit(self, notice: Notice) -> None:
        task = notice.get("task")
        if not isinstance(task, str):
            return
        self._latest[task] = notice
        worker = self._workers.get(task)
        if worker is None or worker.done():
            self._workers[task] = asyncio.create_task(self._work(task))

    def inflight_digest(self, task: str) -> Any:
        """The digest of the notice of ``task`` being processed now, if any."""
        return self._inflight.get(task)

    async def close(self) -> None:
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def _work(self, task: str) -> None:
        while task in self._latest:
            notice = self._latest.pop(task)
            self._inflight[task] = notice.get("digest")
            try:
                await self._process(notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- handed to on_error, which reports it
                await self._on_error(task, notice, exc)
            finally:
                self._inflight.pop(task, None)
