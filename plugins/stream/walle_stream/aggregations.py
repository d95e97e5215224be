"""Mergeable aggregations over window contents.

Every accumulator is plain JSON-able data (so window state can be saved as is) and
mergeable (so sliding windows can be assembled from panes). ``order`` is the engine's
global input position of an event; ``last_n`` uses it to keep arrival order when panes
are merged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Aggregation:
    """``new() -> acc``, ``add(acc, value, order) -> acc``, ``merge(a, b) -> acc`` and
    ``result(acc)``; ``needs_number`` says whether non-numeric values are skipped."""

    def __init__(self, name: str, new: Callable[[], Any], add: Callable[[Any, Any, int], Any],
                 merge: Callable[[Any, Any], Any], result: Callable[[Any], Any], needs_number: bool) -> None:
        self.name = name
        self.new = new
        self.add = add
        self.merge = merge
        self.result = result
        self.needs_number = needs_number


def _mean(acc: list[float]) -> float | None:
    return acc[0] / acc[1] if acc[1] else None


def _last_n(n: int) -> Aggregation:
    def add(acc: list, value: Any, order: int) -> list:
        acc.append([order, value])
        if len(acc) > n:
            del acc[0]
        return acc

    def merge(a: list, b: list) -> list:
        return sorted(a + b, key=lambda item: item[0])[-n:]

    return Aggregation("last_n", list, add, merge, lambda acc: [value for _, value in acc], False)


def _distinct_add(acc: list, value: Any, order: int) -> list:
    if value not in acc:
        acc.append(value)
    return acc


def _distinct_merge(a: list, b: list) -> list:
    return a + [value for value in b if value not in a]


AGGREGATIONS = ("count", "sum", "mean", "last_n", "distinct")


def make_aggregation(name: str, n: int = 0) -> Aggregation:
    """The aggregation called ``name``; ``n`` is the length of ``last_n``. ``distinct``
    yields the number of distinct values (a scalar a model can take as input)."""
    if name == "count":
        return Aggregation(name, lambda: 0, lambda acc, v, o: acc + 1, lambda a, b: a + b, lambda acc: acc, False)
    if name == "sum":
        return Aggregation(name, lambda: 0.0, lambda acc, v, o: acc + v, lambda a, b: a + b, lambda acc: acc, True)
    if name == "mean":
        def add_mean(acc: list, value: float, order: int) -> list:
            return [acc[0] + value, acc[1] + 1]

        return Aggregation(name, lambda: [0.0, 0], add_mean, lambda a, b: [a[0] + b[0], a[1] + b[1]], _mean, True)
    if name == "last_n":
        return _last_n(n)
    if name == "distinct":
        return Aggregation(name, list, _distinct_add, _distinct_merge, len, False)
    raise ValueError(f"unknown aggregation {name!r}")
