"""Walle as an ``onnx.backend`` backend, so ONNX's own backend test suite can run it:

    backend_test = onnx.backend.test.BackendTest(WalleBackend, __name__)

The same adapter ONNX Runtime uses for its test suite; only the CPU device exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import walle_core as wc
from walle_core.testing.onnx_runner import feed_names


class WalleBackendRep(BackendRep):
    """A prepared model: a session plus the order in which positional inputs arrive."""

    def __init__(self, session: wc.Session, input_names: list[str]) -> None:
        self.session = session
        self.input_names = input_names

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            values = list(inputs) if isinstance(inputs, Sequence) else [inputs]
            if len(values) != len(self.input_names):
                raise wc.WalleError(f"expected {len(self.input_names)} inputs {self.input_names}, "
                                    f"got {len(values)}")
            feeds = dict(zip(self.input_names, values))
        outputs = self.session.run(feeds)
        return tuple(outputs[name] for name in self.session.output_names)


class WalleBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> WalleBackendRep:
        super().prepare(model, device, **kwargs)  # runs the ONNX checker
        if not cls.supports_device(device):
            raise wc.WalleError(f"device {device!r} is not supported; Walle's ONNX backend runs on CPU")
        session = wc.load(model, backend="auto", threads=int(kwargs.get("threads", 1)))
        return WalleBackendRep(session, feed_names(model))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)
