"""Helpers for the ONNX import tests: build small models with onnx.helper and check a lowered
graph against onnx.reference.ReferenceEvaluator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from walle_core.ir import Graph, TensorType
from walle_core.onnx import load_model, lower
from walle_core.plugins import decomposition_rules
from walle_core.reference import run_graph


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, np.ndarray], outputs: Sequence[str],
               initializers: Mapping[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for name, v in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def lower_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Graph:
    om = load_model(model.SerializeToString())
    types = {name: TensorType(np.asarray(v).dtype, np.asarray(v).shape) for name, v in feeds.items()}
    return lower(om, types, decomposition_rules())


def run_oracle(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], oracle: str) -> list[np.ndarray]:
    """Expected outputs from onnx.reference ("reference") or ONNX Runtime ("onnxruntime")."""
    if oracle == "onnxruntime":
        import onnxruntime

        sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, dict(feeds))
    return ReferenceEvaluator(model).run(None, dict(feeds))


def check_against_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                            rtol: float = 1e-5, atol: float = 1e-6, oracle: str = "reference") -> Graph:
    """Lower ``model``, run it on the reference backend and compare with the oracle."""
    expected = run_oracle(model, feeds, oracle)
    graph = lower_model(model, feeds)
    got = run_graph(graph, feeds)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        e = np.asarray(e)
        assert g.dtype == e.dtype, f"output {i}: dtype {g.dtype} != {e.dtype}"
        assert g.shape == e.shape, f"output {i}: shape {g.shape} != {e.shape}"
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")
    return graph


def assert_same_value(got, expected, where: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Compare one model output: an array, a list of arrays (sequence) or None (empty optional)."""
    if expected is None:
        assert got is None, f"{where}: expected None, got {type(got).__name__}"
        return
    if isinstance(expected, list):
        assert isinstance(got, list), f"{where}: expected a list, got {type(got).__name__}"
        assert len(got) == len(expected), f"{where}: {len(got)} elements, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_value(g, e, f"{where}[{i}]", rtol, atol)
        return
    e = np.asarray(expected)
    assert isinstance(got, np.ndarray), f"{where}: expected an array, got {type(got).__name__}"
    if e.dtype.kind in "OU":  # strings: onnx.reference may return NumPy unicode, ONNX has object arrays
        assert got.dtype == object and got.shape == e.shape, f"{where}: {got.dtype}{got.shape} != strings{e.shape}"
        assert got.tolist() == e.astype(object).tolist(), f"{where}: {got.tolist()} != {e.tolist()}"
        return
    assert got.dtype == e.dtype and got.shape == e.shape, f"{where}: {got.dtype}{got.shape} != {e.dtype}{e.shape}"
    if np.issubdtype(e.dtype, np.floating):
        np.testing.assert_allclose(got, e, rtol=rtol, atol=atol, err_msg=where)
    else:
        np.testing.assert_array_equal(got, e, err_msg=where)


def check_session_against_reference(model: onnx.ModelProto, feeds: Mapping, backend: str = "auto",
                                    rtol: float = 1e-5, atol: float = 1e-6, oracle: str = "reference") -> None:
    """Run ``model`` through a session (sequence and optional values included) and compare every
    output with onnx.reference (or ONNX Runtime: ``oracle="onnxruntime"``)."""
    import walle_core as wc

    expected = run_oracle(model, feeds, oracle)
    got = wc.load(model, backend=backend).run(dict(feeds))
    for name, e in zip([o.name for o in model.graph.output], expected):
        assert_same_value(got[name], e, f"output {name!r}", rtol, atol)
