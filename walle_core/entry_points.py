"""Installed plugins: the entries of one entry-point group, read from the ``*.dist-info``
folders on ``sys.path``.

``importlib.metadata`` finds the same entries, but importing it pulls in ``email``,
``zipfile`` and ``csv`` (about 30 ms, a fifth of opening a small model), for one
``entry_points.txt`` file per distribution. This reads those files directly, with the same
precedence: the first distribution of a name on ``sys.path`` wins. Zipped eggs are not
searched (pip installs none).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any


class EntryPoint:
    """One ``name = module[:attribute.path]`` line of a group."""

    __slots__ = ("group", "name", "value")

    def __init__(self, name: str, value: str, group: str) -> None:
        self.name, self.value, self.group = name, value, group

    def __repr__(self) -> str:
        return f"EntryPoint({self.name!r}, {self.value!r}, group={self.group!r})"

    def load(self) -> Any:
        module, _, attrs = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for attr in filter(None, attrs.strip().split(".")):
            obj = getattr(obj, attr)
        return obj


def entry_points(group: str) -> list[EntryPoint]:
    """The ``group`` entries of every distribution on ``sys.path``, in path order."""
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for folder in sys.path:
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            continue
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            project = _normalized(stem.split("-", 1)[0])
            if project in seen:
                continue
            seen.add(project)
            try:
                with open(os.path.join(folder or ".", name, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            found.extend(_parse(text, group))
    return found


def _normalized(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def _parse(text: str, group: str) -> list[EntryPoint]:
    """The ``group`` section of an ``entry_points.txt`` (INI: ``[group]`` then ``name = value``)."""
    entries, current = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group and "=" in line:
            name, _, value = line.partition("=")
            entries.append(EntryPoint(name.strip(), value.strip(), group))
    return entries
