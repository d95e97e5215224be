"""Walle's compute core: atomic op IR, decomposition, scheduling and the backend contract.

    import walle_core as wc
    sess = wc.load("model.onnx", backend="auto", threads=2)
    outputs = sess.run({"input": array})
"""

from walle_core import plugins
from walle_core.cancel import CancelToken
from walle_core.errors import BackendError, ModelError, RunCancelled, UnsupportedOpError, WalleError
from walle_core.hookspecs import hookimpl
from walle_core.session import InputSpec, Plan, Session, load

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CancelToken", "InputSpec", "ModelError", "Plan", "RunCancelled", "Session",
    "UnsupportedOpError", "WalleError", "hookimpl", "load", "plugins",
]
