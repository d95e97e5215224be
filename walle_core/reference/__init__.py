"""The NumPy reference backend: implements every atomic op for every dtype."""

from walle_core.reference.backend import ReferenceBackend, run_graph
from walle_core.reference.kernels import evaluate

__all__ = ["ReferenceBackend", "evaluate", "run_graph"]
