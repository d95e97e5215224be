"""Process mode: a pool of worker processes, each running one task at a time under OS limits.

Workers come from the "forkserver" start method (a clean single-threaded server forks
them; "spawn" where forkserver does not exist), never from a fork of the threaded
container. Per run the worker lowers its soft ``RLIMIT_AS`` to its current address space
plus ``memory_mb`` and its soft ``RLIMIT_CPU`` to its CPU time so far plus ``timeout_s``, and
restores both afterwards. The container side enforces the wall-clock timeout and cancels
by killing the worker; a worker that dies for any reason is replaced before the next run.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

from walle_core.cancel import CancelToken
from walle_core.container.runner import Outcome, TaskResources, run_once

#: how often a waiting run checks its cancel flag (seconds); cancelling is rare
_POLL_S = 0.05


class WorkerProcess:
    def __init__(self, mp: Any, state_dir: Path, backend: str) -> None:
        parent_end, child_end = mp.Pipe()
        self.process = mp.Process(target=child_main, args=(child_end, str(state_dir), backend),
                                  name="walle-task-worker", daemon=True)
        self.process.start()
        child_end.close()
        self.conn = parent_end

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def death_outcome(self) -> tuple[str, str]:
        """(status, message) for a worker found dead in the middle of a run."""
        self.process.join(5)
        code = self.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            if -code == signal.SIGXCPU:
                return "timeout", f"worker process passed its CPU-time limit ({name})"
            return "crash", f"worker process died with signal {name}"
        return "crash", f"worker process exited with code {code}"


class ProcessPool:
    """``size`` pre-started worker processes; ``run`` borrows one for one run."""

    def __init__(self, size: int, state_dir: Path, backend: str = "auto") -> None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._mp = multiprocessing.get_context(method)
        if method == "forkserver":
            # the server imports the container (and numpy) once; every worker forks from it warm
            self._mp.set_forkserver_preload(["walle_core.container.process"])
        self.state_dir = state_dir
        self.backend = backend
        self.replaced = 0
        self._cond = threading.Condition()
        self._closed = False
        self._idle = [WorkerProcess(self._mp, state_dir, backend) for _ in range(size)]
        self._busy: list[WorkerProcess] = []

    def _acquire(self) -> WorkerProcess:
        with self._cond:
            self._cond.wait_for(lambda: self._idle or self._closed)
            if self._closed:
                raise RuntimeError("[container] the process pool is closed")
            worker = self._idle.pop()
            self._busy.append(worker)
            return worker

    def _release(self, worker: WorkerProcess, dead: bool) -> None:
        replacement = None
        if dead:
            worker.kill()
            replacement = WorkerProcess(self._mp, self.state_dir, self.backend)
        with self._cond:
            self._busy.remove(worker)
            if replacement is not None:
                self.replaced += 1
                worker = replacement
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
            self._cond.notify()

    def run(self, directory: Path, inputs: dict[str, Any], timeout_s: float | None,
            memory_mb: float | None, cancel: CancelToken) -> Outcome:
        worker = self._acquire()
        dead = True
        try:
            outcome = self._run_on(worker, directory, inputs, timeout_s, memory_mb, cancel)
            dead = not worker.process.is_alive() or outcome.status in ("timeout", "crash", "cancelled")
            return outcome
        finally:
            self._release(worker, dead)

    def _run_on(self, worker: WorkerProcess, directory: Path, inputs: dict[str, Any],
                timeout_s: float | None, memory_mb: float | None, cancel: CancelToken) -> Outcome:
        try:
            worker.conn.send((str(directory), inputs, timeout_s, memory_mb))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # nothing reached the pipe
            return Outcome("error", message=f"the inputs cannot be sent to a worker process: {exc}")
        except (OSError, EOFError):
            status, message = worker.death_outcome()
            return Outcome(status, message=message)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], _POLL_S)
            if worker.conn in ready:
                try:
                    reply = worker.conn.recv()
                except (EOFError, OSError):
                    status, message = worker.death_outcome()
                    return Outcome(status, message=message)
                return Outcome(*reply)
            if worker.process.sentinel in ready:
                status, message = worker.death_outcome()
                return Outcome(status, message=message)
            if cancel.cancelled:
                return Outcome("cancelled", message="cancelled; its worker process was killed")
            if deadline is not None and time.monotonic() > deadline:
                return Outcome("timeout", message=f"still running after {timeout_s} s; its worker process "
                                                  "was killed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.process.join(2)
            worker.kill()


# -- the worker process -----------------------------------------------------------------------
def child_main(conn: Any, state_dir: str, backend: str) -> None:
    """Serve runs until the container sends None or goes away."""
    from walle_core.container.task import ModelCache, load_task

    models = ModelCache(backend)
    loaded: dict[str, tuple[Any, TaskResources]] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        directory, inputs, timeout_s, memory_mb = message
        try:
            if directory not in loaded:
                task = load_task(directory, models=models, execute=True)
                loaded[directory] = (task, TaskResources(Path(state_dir), task.name))
            task, resources = loaded[directory]
        except Exception as exc:  # noqa: BLE001 -- mostly TaskError: the directory changed since it was checked
            reply = Outcome("error", message=f"loading the task in its worker failed: {exc}")
        else:
            restore = _apply_limits(timeout_s, memory_mb)
            try:
                reply = run_once(task, resources, inputs)
            finally:
                restore()
        try:
            conn.send((reply.status, reply.result, reply.message, reply.traceback))
        except Exception as exc:  # noqa: BLE001 -- the result does not pickle; nothing reached the pipe
            conn.send(("error", None, f"the result cannot be sent back to the container: {exc}", ""))


def _apply_limits(timeout_s: float | None, memory_mb: float | None) -> Any:
    import resource

    saved = {limit: resource.getrlimit(limit) for limit in (resource.RLIMIT_AS, resource.RLIMIT_CPU)}
    if memory_mb is not None:
        _lower(resource.RLIMIT_AS, _address_space() + int(memory_mb * 2**20))
    if timeout_s is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _lower(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime) + math.ceil(timeout_s) + 1)

    def restore() -> None:
        for limit, values in saved.items():
            resource.setrlimit(limit, values)

    return restore


def _lower(limit: int, soft: int) -> None:
    import resource

    _, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(limit, (soft, hard))


def _address_space() -> int:
    """Bytes of virtual address space in use now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
