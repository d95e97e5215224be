"""Inputs for a model run (from .npy files or seeded random data) and output summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click
import numpy as np

if TYPE_CHECKING:
    from walle_core.session import InputSpec

#: random integers stay small so that index-like inputs (Gather, Slice) are usually valid
RANDOM_INT_HIGH = 4


def concrete_shape(spec: InputSpec) -> tuple[int, ...]:
    """Symbolic dimensions become 1."""
    return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in spec.shape)


def random_array(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    shape = concrete_shape(spec)
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def read_input_files(pairs: Sequence[str]) -> dict[str, np.ndarray]:
    """Parse ``name=file.npy`` options."""
    arrays: dict[str, np.ndarray] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=FILE.npy, got {pair!r}", param_hint="--input")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read {path!r}: {exc}", param_hint="--input") from None
    return arrays


def make_feeds(specs: Sequence[InputSpec], given: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    """``given`` arrays, and seeded random data for every input not given."""
    unknown = set(given) - {spec.name for spec in specs}
    if unknown:
        names = [spec.name for spec in specs]
        raise click.BadParameter(f"unknown inputs {sorted(unknown)}; the model has {names}", param_hint="--input")
    rng = np.random.default_rng(seed)
    return {spec.name: given[spec.name] if spec.name in given else random_array(spec, rng) for spec in specs}


def summarize(name: str, array: np.ndarray) -> dict[str, Any]:
    """Name, shape, dtype and min/max/mean (None when empty or not numeric)."""
    summary: dict[str, Any] = {"name": name, "shape": list(array.shape), "dtype": array.dtype.name}
    numeric = array.size > 0 and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_)
    values = array.astype(np.float64) if numeric else None
    summary["min"] = float(values.min()) if values is not None else None
    summary["max"] = float(values.max()) if values is not None else None
    summary["mean"] = float(values.mean()) if values is not None else None
    return summary


def summary_row(summary: Mapping[str, Any]) -> list[str]:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.6g}"

    shape = "x".join(map(str, summary["shape"])) or "scalar"
    return [summary["name"], shape, summary["dtype"], fmt(summary["min"]), fmt(summary["max"]),
            fmt(summary["mean"])]


SUMMARY_COLUMNS = ["output", "shape", "dtype", "min", "max", "mean"]
