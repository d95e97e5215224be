"""Runner for the shared peer benchmark (``--runner
walle=walle_core.testing.bench:peer_runner``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import walle_core as wc


def peer_runner(onnx_path: str, inputs: dict[str, np.ndarray], threads: int
                ) -> tuple[Callable[[], list[np.ndarray]], dict[str, Any]]:
    """Plan the model for ``inputs``' shapes up front, so the timed callable is one full
    inference and nothing else; outputs come back in ONNX output order."""
    session = wc.load(onnx_path, backend="auto", threads=threads)
    feeds = dict(inputs)
    plan = session.plan_for(feeds)
    names = list(session.output_names)

    def infer() -> list[np.ndarray]:
        outputs = session.run(feeds)
        return [outputs[name] for name in names]

    info = {
        "version": wc.__version__,
        "backends": [b.name for b in session.backends],
        "segments": [f"{name}:{len(nodes)}" for name, nodes in plan.segments],
        "threads": threads,
    }
    return infer, info
