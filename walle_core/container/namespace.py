"""Per-task module namespaces for thread mode.

Every task gets a synthetic package ``_walle_task_<n>`` whose ``__path__`` is the task
directory; its entry script and helper modules are submodules of it. Two tasks that both
ship a ``utils.py`` therefore get ``_walle_task_1.utils`` and ``_walle_task_2.utils``: the
plain name ``utils`` is never put in the shared ``sys.modules``.

Task code still writes ``import utils``. Each task module runs with its own builtins whose
``__import__`` rewrites absolute imports of the task's own top-level modules to the
prefixed names, and leaves every other import (numpy, the standard library) to the normal
machinery. The rewrite is keyed by the importing module's builtins, not by the thread, so
it also holds in threads a task starts itself.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import threading
import types
from pathlib import Path
from typing import Any

_PREFIX = "_walle_task_"
_counter = itertools.count(1)
_registry: dict[str, TaskNamespace] = {}  # package name -> namespace, read by the finder
_registry_lock = threading.Lock()


class TaskNamespace:
    """The module namespace of one loaded task. ``close()`` drops its modules."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        safe = "".join(c if c.isalnum() else "_" for c in label)
        self.package = f"{_PREFIX}{next(_counter)}_{safe}"
        self.builtins = dict(vars(builtins))
        self.builtins["__import__"] = self._import
        # the task's top-level modules and packages, listed once: a loaded task is immutable,
        # and `import numpy` inside a hot run() must not touch the file system
        self._local = frozenset(
            [p.stem for p in directory.glob("*.py")]
            + [p.name for p in directory.iterdir() if (p / "__init__.py").is_file()])
        root = types.ModuleType(self.package, f"modules of task {label!r}")
        root.__path__ = [str(directory)]
        root.__spec__ = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        root.__spec__.submodule_search_locations = [str(directory)]
        with _registry_lock:
            _install_finder()
            _registry[self.package] = self
            sys.modules[self.package] = root

    def load_entry(self, entry: Path) -> types.ModuleType:
        """Import the entry script as a submodule of the task package (runs its top level)."""
        relative = entry.relative_to(self.directory).with_suffix("")
        return importlib.import_module(".".join((self.package, *relative.parts)))

    def is_local(self, top_level: str) -> bool:
        return top_level in self._local

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                level: int = 0) -> types.ModuleType:
        top = name.partition(".")[0]
        if level != 0 or not top or not self.is_local(top):
            return builtins.__import__(name, globals, locals, fromlist, level)
        module = builtins.__import__(f"{self.package}.{name}", globals, locals, fromlist, 0)
        if fromlist:
            return module
        # `import utils.sub` binds `utils`: return the task's top-level module, not the package
        return sys.modules[f"{self.package}.{top}"]

    def close(self) -> None:
        with _registry_lock:
            _registry.pop(self.package, None)
            for name in [n for n in sys.modules if n == self.package or n.startswith(self.package + ".")]:
                del sys.modules[name]


class _TaskModuleLoader(importlib.abc.Loader):
    """Executes a task module with the task's builtins (hence its import rewrite). Source is
    compiled once per module; nothing is written to the task directory."""

    def __init__(self, namespace: TaskNamespace, path: Path) -> None:
        self.namespace = namespace
        self.path = path

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__builtins__ = self.namespace.builtins  # type: ignore[attr-defined]
        code = compile(self.get_source(module.__name__), str(self.path), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 -- running task code is this loader's job

    def get_source(self, fullname: str) -> str:
        return self.path.read_text(encoding="utf-8")


class _TaskModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``_walle_task_<n>.a.b`` in the directory of task ``n`` (and nowhere else)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith(_PREFIX):
            return None
        package, _, rest = fullname.partition(".")
        namespace = _registry.get(package)
        if namespace is None or not rest:
            return None
        base = namespace.directory.joinpath(*rest.split("."))
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                fullname, base / "__init__.py", loader=_TaskModuleLoader(namespace, base / "__init__.py"),
                submodule_search_locations=[str(base)])
        source = base.with_suffix(".py")
        if source.is_file():
            return importlib.util.spec_from_file_location(
                fullname, source, loader=_TaskModuleLoader(namespace, source))
        if base.is_dir():  # a plain folder of modules (no __init__.py): a namespace package
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [str(base)]
            return spec
        return None


def _install_finder() -> None:
    """Put the finder on ``sys.meta_path`` once per interpreter (caller holds the lock)."""
    if not any(isinstance(f, _TaskModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TaskModuleFinder())
