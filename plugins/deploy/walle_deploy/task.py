"""The minimal task check the deploy plugin needs before packing a task directory.

The full task format (``task.toml`` with models, trigger, limits, isolation, config) belongs
to ``walle_core.container``; until that loader exists this module checks only what
deployment depends on: the file parses, names the task and its version, and the entry
script exists inside the directory. :func:`load_task_info` is the single place to switch
to ``walle_core.container.load_task`` later.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from walle_deploy.errors import TaskError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TASK_FILE = "task.toml"
#: task names become directory names, URL path segments and MQTT topic levels
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    version: str
    entry: str


def check_name(name: str, what: str = "task name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TaskError(f"[deploy] invalid {what} {name!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                        "starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise TaskError(f"[deploy] invalid task version {version!r}: use 1-64 of A-Z a-z 0-9 . + _ -")
    return version


def load_task_info(task_dir: str | Path) -> TaskInfo:
    """Validate ``task_dir`` enough to deploy it; raise :class:`TaskError` naming the problem."""
    root = Path(task_dir)
    if not root.is_dir():
        raise TaskError(f"[deploy] task directory not found: {root}")
    path = root / TASK_FILE
    if not path.is_file():
        raise TaskError(f"[deploy] {root} has no {TASK_FILE}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"[deploy] {path}: not valid TOML: {exc}") from exc
    for key in ("name", "version", "entry"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise TaskError(f"[deploy] {path}: field '{key}' is required and must be a string")
    name = check_name(data["name"])
    version = check_version(data["version"])
    entry = data["entry"]
    entry_path = (root / entry).resolve()
    if not entry_path.is_relative_to(root.resolve()) or not entry_path.is_file():
        raise TaskError(f"[deploy] {path}: entry {entry!r} is not a file inside the task directory")
    return TaskInfo(name=name, version=version, entry=entry)
