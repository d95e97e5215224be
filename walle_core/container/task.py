"""Loading a task directory: validate the manifest, load its models, import its entry.

Everything that can be wrong with a task is found here, once, and reported as a
:class:`TaskError` naming the file and field; running a loaded task then only calls its
``run`` function.
"""

from __future__ import annotations

import hashlib
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from walle_core.container.errors import TaskError
from walle_core.container.namespace import TaskNamespace
from walle_core.container.spec import TaskSpec, parse_task_dir

if TYPE_CHECKING:
    from walle_core.session import Session

RunFunction = Callable[[Any, dict[str, Any]], dict[str, Any]]


class ModelCache:
    """Sessions shared by every task whose model file has the same content (SHA-256), so N
    tasks shipping one model hold one copy of its weights and plans."""

    def __init__(self, backend: str = "auto", threads: int = 1) -> None:
        self.backend = backend
        self.threads = threads
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> Session:
        import walle_core

        data = path.read_bytes()
        key = hashlib.sha256(data).hexdigest()
        with self._lock:  # one load per content even when several tasks load at once
            session = self._sessions.get(key)
            if session is None:
                session = walle_core.load(data, backend=self.backend, threads=self.threads)
                self._sessions[key] = session
            return session


class Task:
    """A loaded task: its spec, its models as ready sessions and (when imported) its ``run``."""

    def __init__(self, spec: TaskSpec, models: dict[str, Session], namespace: TaskNamespace | None,
                 run: RunFunction | None) -> None:
        self.spec = spec
        self.models = models
        self.namespace = namespace
        self.run_function = run

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mode(self) -> str:
        return self.spec.mode

    def close(self) -> None:
        """Drop the task's modules from ``sys.modules`` (the task cannot run afterwards)."""
        if self.namespace is not None:
            self.namespace.close()
            self.namespace = None
            self.run_function = None

    def __repr__(self) -> str:
        return f"Task({self.spec.name!r} {self.spec.version}, mode={self.spec.mode})"


def load_task(directory: str | Path, *, models: ModelCache | None = None, execute: bool | None = None) -> Task:
    """Load the task in ``directory``. ``execute`` (default: thread-mode tasks only) imports
    the entry script in this process; process-mode tasks are only syntax-checked here and
    imported inside their worker process, so untrusted code never runs in the container."""
    spec = parse_task_dir(directory)
    cache = models if models is not None else ModelCache()
    sessions = {name: _load_model(spec, name, path, cache) for name, path in spec.models.items()}
    if execute is None:
        execute = spec.mode == "thread"
    if not execute:
        _syntax_check(spec.entry)
        return Task(spec, sessions, None, None)
    namespace = TaskNamespace(spec.directory, spec.name)
    try:
        run = _import_entry(spec, namespace)
    except BaseException:
        namespace.close()
        raise
    return Task(spec, sessions, namespace, run)


def _load_model(spec: TaskSpec, name: str, path: Path, cache: ModelCache) -> Session:
    try:
        return cache.get(path)
    except Exception as exc:  # noqa: BLE001 -- any loader failure means a bad model file
        field = spec.model_keys.get(name, f"models.{name}")
        raise TaskError(str(spec.manifest), field, f"model file {path.name!r} failed to load: {exc}") from None


def _syntax_check(entry: Path) -> None:
    try:
        compile(entry.read_text(encoding="utf-8"), str(entry), "exec", dont_inherit=True)
    except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
        raise TaskError(str(entry), None, f"does not compile: {exc}") from None


def _import_entry(spec: TaskSpec, namespace: TaskNamespace) -> RunFunction:
    try:
        module = namespace.load_entry(spec.entry)
    except SyntaxError as exc:
        raise TaskError(str(spec.entry), None, f"does not compile: {exc}") from None
    except Exception as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise TaskError(str(spec.entry), None, f"importing it failed: {text}") from exc
    run = getattr(module, "run", None)
    if not callable(run):
        raise TaskError(str(spec.entry), "run", "the entry script must define a function run(ctx, inputs)")
    return run
