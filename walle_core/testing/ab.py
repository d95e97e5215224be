"""Two settings of a build-time environment variable on one model, compared per op in one process.

``python -m walle_core.testing.ab MODEL --env WALLE_CPU_X86_WINOGRAD 0 4 [--threads 2]``

On a noisy host, timings taken in separate processes drift by 10-50 % from one minute to the
next, more than most changes worth measuring. Here both variants are compiled in the same
process (each under its own value of the variable) and their runs alternate, A B then B A, so
both see the same noise; the minimum of each op's time over the runs then shows differences of
a few percent. That is how a Winograd variant was seen to speed up a stage's first 3x3
convolution by 13-23 % and slow the next stage's first one by 8-15 %.

Only settings read while a model is compiled can be compared this way (the backends'
algorithm and layout switches); the value ``unset`` removes the variable. Per-op times need a
backend that records them (``WALLE_PROFILE=1``, set here while compiling).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

import walle_core as wc
from walle_core.cli.model_inputs import make_feeds

UNSET = "unset"


@dataclass(frozen=True)
class OpTimes:
    """One op's best time under each setting."""

    index: int
    op: str
    origin: str
    ms_a: float
    ms_b: float

    @property
    def ratio(self) -> float:
        return self.ms_b / self.ms_a if self.ms_a > 0 else float("inf")


@contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """``changes`` applied to ``os.environ`` for the block (``unset`` removes a variable)."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value == UNSET:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Variant:
    """A session compiled under one setting, and the best time of each op so far."""

    def __init__(self, model: str, backend: str, threads: int, env: str, value: str) -> None:
        with _environment({env: value, "WALLE_PROFILE": "1"}):
            self.session = wc.load(model, backend=backend, threads=threads)
            self.feeds = make_feeds(self.session.inputs, {}, 0)
            self.plan = self.session.plan_for(self.feeds)
        self.session.run(self.feeds)  # a warm-up run, which gives the ops' labels
        entries = self._entries()
        if not entries:
            raise ValueError(f"{model}: no per-op times (its backends do not record them)")
        self.labels = [(e["op"], e["origin"]) for e in entries]
        self._seen = self._cumulative(entries)
        self.best = np.full(len(entries), np.inf)

    def _entries(self) -> list[dict]:
        return [e for exe in self.plan.executables for e in exe.profile()]

    @staticmethod
    def _cumulative(entries: list[dict]) -> np.ndarray:
        return np.array([e["ms"] * e["runs"] for e in entries])

    def run_once(self) -> None:
        """One run; each op's time in it is the growth of its cumulative time."""
        self.session.run(self.feeds)
        total = self._cumulative(self._entries())
        self.best = np.minimum(self.best, total - self._seen)
        self._seen = total


def compare(model: str, env: str, values: tuple[str, str], *, threads: int = 1, runs: int = 30,
            backend: str = "auto") -> list[OpTimes]:
    """Each op's best time over ``runs`` alternated runs of ``model`` compiled with ``env`` set to
    ``values[0]`` (A) and to ``values[1]`` (B). The two compiled plans must have the same ops."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    a = _Variant(model, backend, threads, env, values[0])
    b = _Variant(model, backend, threads, env, values[1])
    if a.labels != b.labels:
        raise ValueError(f"{env}={values[0]} and {env}={values[1]} compile different ops: "
                         f"{len(a.labels)} against {len(b.labels)}; compare totals instead")
    for run in range(runs):
        first, second = (a, b) if run % 2 == 0 else (b, a)
        first.run_once()
        second.run_once()
    return [OpTimes(i, op, origin, float(ms_a), float(ms_b))
            for i, ((op, origin), ms_a, ms_b) in enumerate(zip(a.labels, a.best, b.best))]


#: ops whose times differ by less than this are not listed, whatever the ratio (copies that
#: take no time, done in place, differ by large ratios of nothing)
MIN_LISTED_MS = 0.005


def report(rows: Sequence[OpTimes], values: tuple[str, str], threshold: float = 0.05) -> str:
    """Ops whose times differ by more than ``threshold`` (and MIN_LISTED_MS), then the totals."""
    lines = [f"{'#':>4} {values[0]:>9} {values[1]:>9}  ratio  op (origin)"]
    for r in rows:
        if abs(r.ratio - 1) > threshold and abs(r.ms_b - r.ms_a) >= MIN_LISTED_MS:
            lines.append(f"{r.index:>4} {r.ms_a:9.3f} {r.ms_b:9.3f} {r.ratio:6.3f}  {r.op} ({r.origin})")
    total_a, total_b = sum(r.ms_a for r in rows), sum(r.ms_b for r in rows)
    lines.append(f"sum of per-op minima: {total_a:.3f} ms against {total_b:.3f} ms "
                 f"(ratio {total_b / total_a:.3f}; {len(rows)} ops, "
                 f"{len(lines) - 1} differ by more than {threshold:.0%})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m walle_core.testing.ab",
        description="Two settings of a compile-time environment variable compared per op in one process.")
    parser.add_argument("model")
    parser.add_argument("--env", required=True, help="the environment variable to vary")
    parser.add_argument("values", nargs=2, help=f"its two values ({UNSET!r} removes it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30, help="runs of each variant")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threshold", type=float, default=0.05, help="list ops that differ by more than this")
    args = parser.parse_args(argv)
    values = (args.values[0], args.values[1])
    rows = compare(args.model, args.env, values, threads=args.threads, runs=args.runs, backend=args.backend)
    print(report(rows, values, args.threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
