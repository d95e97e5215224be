"""The contract between the core and a backend.

A backend sees atomic ops only (never ONNX). The core hands it a :class:`Segment` — a
connected run of nodes that the scheduler assigned to it — and gets back an
:class:`Executable` that runs the whole segment in one call. Only ``supports`` and
``compile`` are required; every other method has a safe default, documented with when
the core calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from walle_core.cancel import CancelToken
from walle_core.ir import Node, TensorType
from walle_core.ops import Op


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not available (empty when available)
    device: str = ""  # human-readable device description


@dataclass
class Segment:
    """A run of nodes for one backend, in topological order.

    ``inputs`` are tensors produced outside the segment (graph inputs or other segments'
    outputs) and arrive at ``run`` in this order; ``outputs`` are the tensors the segment
    must return, in this order. ``constants`` holds every constant the nodes read.
    """

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    types: dict[str, TensorType]
    constants: dict[str, np.ndarray] = field(default_factory=dict)


class Executable(ABC):
    """A compiled segment. ``run`` must be thread-safe: one executable serves every
    thread that shares the session."""

    @abstractmethod
    def run(self, inputs: list[Any]) -> list[Any]:
        """Run the segment. ``inputs``/return values are in the backend's memory domain
        (NumPy arrays for host backends), ordered as ``Segment.inputs``/``Segment.outputs``.
        Returned arrays are owned by the caller."""

    def run_cancellable(self, inputs: list[Any], cancel: CancelToken) -> list[Any]:
        """``run`` that stops early once ``cancel`` is cancelled, raising ``RunCancelled``.
        This default checks only before and after the segment; backends whose kernels can
        stop between blocks of work override it."""
        cancel.raise_if_cancelled("run")
        outputs = self.run(inputs)
        cancel.raise_if_cancelled("run")
        return outputs

    def profile(self) -> list[dict[str, Any]]:
        """Per-op time of the runs so far, when the backend records it (``WALLE_PROFILE=1`` at
        compile time): ``[{"op", "origin", "ms", "runs"}]`` in execution order. Backends that do
        not profile return an empty list."""
        return []


class Backend(ABC):
    #: unique name, used in ``backend=`` and on the CLI
    name: ClassVar[str]
    #: tensors move between backends with different domains through to_host/to_device
    memory_domain: ClassVar[str] = "host"
    #: order of preference for backend="auto" (higher first)
    priority: ClassVar[int] = 0

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))

    @classmethod
    def availability(cls) -> Availability:
        """Called before instantiation (``walle backends``, ``backend="auto"``): can this
        backend run here? A backend whose native module or device is missing says why."""
        return Availability(True)

    @classmethod
    def supported_ops(cls) -> frozenset[Op]:
        """Atomic ops this backend implements for at least some dtypes (for listings)."""
        return frozenset(Op)

    @abstractmethod
    def supports(self, node: Node, types: Mapping[str, TensorType]) -> bool:
        """Called by the scheduler for every node: can this backend run it, given the
        node's attributes and its tensors' dtypes and shapes? Nodes it declines fall back
        to the next backend."""

    @abstractmethod
    def compile(self, segment: Segment) -> Executable:
        """Called once per segment and input-shape signature, at session planning time.
        Heavy preparation (weight packing, memory planning, kernel selection) belongs here."""

    def estimate_cost(self, node: Node, types: Mapping[str, TensorType]) -> float | None:
        """Estimated seconds for one execution of ``node``; ``None`` if unknown. Called by
        the cost-based scheduler; the default scheduler does not use it."""
        return None

    def to_device(self, array: np.ndarray) -> Any:
        """Move a host array into this backend's memory (identity for host backends)."""
        return array

    def to_host(self, value: Any) -> np.ndarray:
        """Move a value from this backend's memory to a host NumPy array."""
        return value

    def describe(self) -> dict[str, Any]:
        avail = self.availability()
        return {"name": self.name, "device": avail.device, "threads": self.threads}
