"""The task format: ``task.toml`` parsed into a :class:`TaskSpec`, strictly.

Every rule here exists because a deployed task is edited by hand and shipped to devices:
an unknown key is far more often a typo (``timeout = 5`` for ``timeout_s``) than an
extension, so it is an error, and every error names the file and the dotted field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walle_core.container.errors import TaskError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib  # type: ignore[no-redef]

MANIFEST = "task.toml"
MODES = ("thread", "process")

_TOP_KEYS = {"name", "version", "entry", "models", "trigger", "limits", "isolation", "config"}
_LIMIT_KEYS = {"timeout_s", "memory_mb"}
_ISOLATION_KEYS = {"mode"}
# a task name becomes a logger name, a directory name and a module-name fragment
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Limits:
    timeout_s: float | None = None
    memory_mb: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A validated ``task.toml``. Paths are absolute and inside ``directory``."""

    directory: Path
    name: str
    version: str
    entry: Path
    models: dict[str, Path]
    #: the manifest key each model came from (``models[0]`` or ``models.net``), for errors
    model_keys: dict[str, str] = field(default_factory=dict)
    limits: Limits = Limits()
    mode: str = "thread"
    trigger: dict[str, Any] = field(default_factory=dict)  # opaque: read by the stream plugin
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST


def parse_task_dir(directory: str | Path) -> TaskSpec:
    """Read and validate ``directory/task.toml``; raise :class:`TaskError` on any problem."""
    directory = Path(directory).resolve()
    manifest = directory / MANIFEST
    if not directory.is_dir():
        raise TaskError(str(directory), None, "not a directory")
    if not manifest.is_file():
        raise TaskError(str(manifest), None, "missing (a task directory needs a task.toml)")
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(str(manifest), None, f"invalid TOML: {exc}") from None
    return _validate(directory, manifest, data)


def _validate(directory: Path, manifest: Path, data: dict[str, Any]) -> TaskSpec:
    def fail(key: str, problem: str) -> TaskError:
        return TaskError(str(manifest), key, problem)

    _reject_unknown(data, _TOP_KEYS, "", fail)
    for key in ("name", "version", "entry"):
        if key not in data:
            raise fail(key, "required key is missing")
        if not isinstance(data[key], str) or not data[key]:
            raise fail(key, f"expected a non-empty string, got {data[key]!r}")
    if not _NAME.match(data["name"]):
        raise fail("name", f"{data['name']!r} must match {_NAME.pattern}")

    entry = _inside(directory, data["entry"], lambda p: fail("entry", p))
    if entry.suffix != ".py":
        raise fail("entry", f"{data['entry']!r} is not a .py file")
    if not entry.is_file():
        raise fail("entry", f"file {data['entry']!r} does not exist in {directory}")

    limits = _table(data, "limits", fail)
    _reject_unknown(limits, _LIMIT_KEYS, "limits.", fail)
    isolation = _table(data, "isolation", fail)
    _reject_unknown(isolation, _ISOLATION_KEYS, "isolation.", fail)
    mode = isolation.get("mode", "thread")
    if mode not in MODES:
        raise fail("isolation.mode", f"expected one of {list(MODES)}, got {mode!r}")

    models = _models(directory, data.get("models", []), fail)
    return TaskSpec(
        directory=directory,
        name=data["name"],
        version=data["version"],
        entry=entry,
        models={name: path for name, (path, _) in models.items()},
        model_keys={name: key for name, (_, key) in models.items()},
        limits=Limits(_positive(limits, "timeout_s", fail), _positive(limits, "memory_mb", fail)),
        mode=mode,
        trigger=_table(data, "trigger", fail),
        config=_table(data, "config", fail),
    )


def _reject_unknown(table: dict[str, Any], allowed: set[str], prefix: str, fail: Any) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(prefix + unknown[0], f"unknown key (allowed: {sorted(allowed)})")


def _table(data: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise fail(key, f"expected a table, got {type(value).__name__}")
    return value


def _positive(table: dict[str, Any], key: str, fail: Any) -> float | None:
    if key not in table:
        return None
    value = table[key]
    # bool is an int subclass; `timeout_s = true` is a mistake, not 1 second
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise fail(f"limits.{key}", f"expected a positive number, got {value!r}")
    return float(value)


def _inside(directory: Path, relative: str, fail: Any) -> Path:
    """``relative`` resolved inside the task directory; tasks may not reach outside it."""
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory):
        raise fail(f"{relative!r} points outside the task directory")
    return path


def _models(directory: Path, value: Any, fail: Any) -> dict[str, tuple[Path, str]]:
    """``models = ["net.onnx"]`` (named by file stem) or ``[models] net = "net.onnx"``."""
    if isinstance(value, list):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise fail(f"models[{i}]", f"expected a file name, got {item!r}")
            pairs.append((Path(item).stem, item, f"models[{i}]"))
    elif isinstance(value, dict):
        pairs = []
        for name, item in value.items():
            if not isinstance(item, str) or not item:
                raise fail(f"models.{name}", f"expected a file name, got {item!r}")
            pairs.append((name, item, f"models.{name}"))
    else:
        raise fail("models", f"expected a list of files or a table name = file, got {type(value).__name__}")
    models: dict[str, tuple[Path, str]] = {}
    for name, item, key in pairs:
        if not _MODEL_NAME.match(name):
            raise fail(key, f"model name {name!r} must match {_MODEL_NAME.pattern}")
        if name in models:
            raise fail(key, f"duplicate model name {name!r}")
        path = _inside(directory, item, lambda p, key=key: fail(key, p))
        if not path.is_file():
            raise fail(key, f"file {item!r} does not exist in {directory}")
        models[name] = (path, key)
    return models
