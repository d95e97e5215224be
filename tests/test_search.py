"""The cost model and the cost-based assignment across backends."""

from __future__ import annotations

import numpy as np
import pytest

import walle_core as wc
from walle_core import ops
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Op, UnaryFn
from walle_core.reference import ReferenceBackend, run_graph
from walle_core.scheduler import schedule
from walle_core.search import BackendProfile, CostAssigner, ProfileCache, node_flops
from walle_core.session import Plan

F32 = np.dtype(np.float32)


class FastMatmulBackend(ReferenceBackend):
    """A pretend accelerator in its own memory domain that only runs MATMUL."""

    name = "fast_matmul"
    memory_domain = "accel"

    def supports(self, node, types) -> bool:
        return node.op is Op.MATMUL


class FixedProfiles(ProfileCache):
    def __init__(self, profiles: dict[str, BackendProfile]) -> None:
        self.profiles = profiles

    def get(self, backend):
        return self.profiles[backend.name]


def _chain(size: int, matmuls: int):
    b = GraphBuilder()
    x = b.add_input("x", TensorType(F32, (size, size)))
    cur = x
    rng = np.random.default_rng(0)
    for _ in range(matmuls):
        w = b.constant((rng.standard_normal((size, size)) / size).astype(np.float32))
        cur = b.emit1(Op.MATMUL, [cur, w], ops.MatMulAttrs())
    cur = b.emit1(Op.UNARY, [cur], ops.UnaryAttrs(UnaryFn.TANH))
    b.graph.outputs = [cur]
    return b.graph


HOST = BackendProfile(flops_per_s=1e10, bytes_per_s=1e10, launch_s=1e-6)


@pytest.mark.parametrize("size,expect_accel", [(512, True), (4, False)])
def test_assignment_weighs_compute_against_transfers(size, expect_accel):
    accel = BackendProfile(flops_per_s=1e12, bytes_per_s=1e9, launch_s=1e-4)
    assigner = CostAssigner(FixedProfiles({"reference": HOST, "fast_matmul": accel}))
    graph = _chain(size, matmuls=3)
    backends = [FastMatmulBackend(), ReferenceBackend()]
    choice = assigner.assign(graph, backends)
    names = [backends[i].name for i in choice]
    # big GEMMs pay for the round trip to the accelerator; tiny ones do not
    assert names[:3] == (["fast_matmul"] * 3 if expect_accel else ["reference"] * 3)
    assert names[3] == "reference"  # tanh only runs on the host
    sched = schedule(graph, backends, assigner)
    assert sched.copies == (2 if expect_accel else 0)
    plan = Plan(graph, sched, [s.backend.compile(s.segment) for s in sched.segments])
    x = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    np.testing.assert_allclose(plan.execute({"x": x})[0], run_graph(graph, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_flops_of_dense_ops():
    graph = _chain(8, matmuls=1)
    assert node_flops(graph.nodes[0], graph.types) == 2 * 8 * 8 * 8


def test_profiles_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path))
    cache = ProfileCache()
    backend = ReferenceBackend()
    first = cache.get(backend)
    assert first.flops_per_s > 0 and first.bytes_per_s > 0 and first.launch_s > 0
    assert (tmp_path / "profiles.json").exists()
    assert ProfileCache().get(backend) == first  # read back, not re-measured


def test_cost_search_session_matches_first_supporting(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path))
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"]),
         helper.make_node("TopK", ["y", "k"], ["v", "i"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [4, 3])],
        [w, numpy_helper.from_array(np.array([3], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((4, 16)).astype(np.float32)
    want = wc.load(model, backend="reference").run({"x": x})
    got = wc.load(model, backend="auto", search="cost").run({"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
