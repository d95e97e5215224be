"""The stream side of a task directory: ``task.toml``'s ``name`` and ``[trigger]``.

The task format is shared with the compute container (``docs/tasks.md``); the stream
plugin reads only what concerns it. The features a task takes as inputs are declared in
``[trigger.features.<name>]`` tables, inside the trigger table so that the other tools
that read ``task.toml`` see one section owned by the stream plugin::

    [trigger]
    sequence = ["page_view:detail", "add_to_cart"]
    within_ms = 30000
    key = "user"

    [trigger.features.views_5m]
    window = "sliding"
    size_ms = 300000
    slide_ms = 60000
    agg = "count"
    types = ["page_view"]
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from walle_stream.errors import StreamConfigError
from walle_stream.pattern import Trigger, trigger_from_table
from walle_stream.windows import FeatureSpec, feature_from_table


@dataclass(frozen=True)
class StreamTask:
    """A trigger and the features handed to the task when it fires. ``path`` is the task
    directory (None for tasks built in Python)."""

    name: str
    trigger: Trigger
    features: tuple[FeatureSpec, ...] = ()
    path: Path | None = field(default=None, compare=False)


def load_task(directory: str | Path) -> StreamTask:
    """Read ``DIR/task.toml``; a task without ``[trigger]`` is an error here, since the
    stream plugin has nothing to do with it."""
    path = Path(directory) / "task.toml"
    if not path.is_file():
        raise StreamConfigError(f"[stream] {path}: no task.toml in task directory {directory}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StreamConfigError(f"[stream] {path}: invalid TOML: {exc}") from None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise StreamConfigError(f"[stream] {path}: 'name' must be a non-empty string")
    table = data.get("trigger")
    if not isinstance(table, dict):
        raise StreamConfigError(f"[stream] {path}: no [trigger] table")
    return task_from_table(name, table, f"{path} [trigger]", Path(directory))


def task_from_table(name: str, table: dict[str, Any], where: str = "[trigger]",
                    path: Path | None = None) -> StreamTask:
    trigger = trigger_from_table(name, table, where)
    features = table.get("features", {})
    if not isinstance(features, dict) or not all(isinstance(v, dict) for v in features.values()):
        raise StreamConfigError(f"[stream] {where}: 'features' must be a table of tables")
    specs = tuple(feature_from_table(fname, ftable, trigger.key, f"{where}.features.{fname}")
                  for fname, ftable in features.items())
    return StreamTask(name, trigger, specs, path)


def load_tasks(directories: Iterable[str | Path]) -> list[StreamTask]:
    """Load several task directories; a directory that holds task directories (and no
    task.toml itself) contributes all of them, so ``--tasks examples/`` works."""
    tasks: list[StreamTask] = []
    for directory in directories:
        directory = Path(directory)
        if not (directory / "task.toml").is_file() and directory.is_dir():
            children = sorted(p for p in directory.iterdir() if (p / "task.toml").is_file())
            if children:
                tasks.extend(load_task(child) for child in children)
                continue
        tasks.append(load_task(directory))
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StreamConfigError(f"[stream] duplicate task name(s): {', '.join(duplicates)}")
    return tasks
