"""The cost model and the cost-based assignment across backends."""

from __future__ import annotations

import time

import numpy as np
import pytest

import walle_core as wc
from walle_core import ops
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Op, UnaryFn
from walle_core.reference import ReferenceBackend, run_graph
from walle_core.scheduler import schedule
from walle_core.search import (
    BackendProfile,
    CostAssigner,
    CostModel,
    MeasuringAssigner,
    PlanCache,
    ProfileCache,
    candidate_assignments,
    node_bytes,
    node_flops,
    node_times,
    predicted_times,
    rank_correlation,
    time_plans,
)
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


def _topk_model():
    """MatMul -> Relu -> TopK: TopK lowers to ops only some backends run."""
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
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cost_search_session_matches_first_supporting(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path))
    model = _topk_model()
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    want = wc.load(model, backend="reference").run({"x": x})
    got = wc.load(model, backend="auto", search="cost").run({"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


# -- measurement mode ----------------------------------------------------------------------
ACCEL = BackendProfile(flops_per_s=1e12, bytes_per_s=1e9, launch_s=1e-4)


def _fixed_cost() -> CostAssigner:
    return CostAssigner(FixedProfiles({"reference": HOST, "fast_matmul": ACCEL}))


class ScriptedTimer:
    """Stands in for wall-clock timing: a fixed time per plan, keyed by the backend names."""

    def __init__(self, times: dict[tuple[str, ...], float]) -> None:
        self.times = times
        self.calls = 0

    def __call__(self, graph, backends, candidates) -> dict[str, float]:
        self.calls += 1
        return {label: self.times[tuple(backends[j].name for j in c)] for label, c in candidates.items()}


ACCEL_PLAN = ("fast_matmul",) * 3 + ("reference",)
HOST_PLAN = ("reference",) * 4


def test_candidates_are_the_cost_plan_and_each_backend_first():
    graph = _chain(512, matmuls=3)
    backends = [FastMatmulBackend(), ReferenceBackend()]
    found = candidate_assignments(graph, backends, _fixed_cost())
    # the cost plan is also the accelerator-first plan: one entry, both labels
    assert found == {"cost+fast_matmul": [0, 0, 0, 1], "reference": [1, 1, 1, 1]}


def test_measurement_overrules_the_cost_model_and_is_cached(tmp_path):
    graph = _chain(512, matmuls=3)
    backends = [FastMatmulBackend(), ReferenceBackend()]
    cache = PlanCache(tmp_path / "plans.json")
    # the cost model prefers the accelerator; the measurement says the host is faster
    timer = ScriptedTimer({ACCEL_PLAN: 0.010, HOST_PLAN: 0.004})
    first = MeasuringAssigner(_fixed_cost(), cache, timer)
    assert first.assign(graph, backends) == [1, 1, 1, 1]
    assert first.last_decision.winner == "reference" and not first.last_cache_hit
    assert first.last_decision.timings == {"cost+fast_matmul": 0.010, "reference": 0.004}
    assert timer.calls == 1

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached decision must not be measured again")

    again = MeasuringAssigner(_fixed_cost(), PlanCache(tmp_path / "plans.json"), no_timing)
    assert again.assign(graph, backends) == [1, 1, 1, 1] and again.last_cache_hit


def test_plan_cache_key_separates_shapes_and_devices(tmp_path):
    cache = PlanCache(tmp_path / "plans.json")
    graph = _chain(8, matmuls=1)
    one = [FastMatmulBackend(), ReferenceBackend()]
    keys = {cache.key(graph, one), cache.key(_chain(16, matmuls=1), one),
            cache.key(graph, [FastMatmulBackend(threads=2), ReferenceBackend()]),
            cache.key(graph, [ReferenceBackend()])}
    assert len(keys) == 4
    assert cache.key(_chain(8, matmuls=1), [FastMatmulBackend(), ReferenceBackend()]) == cache.key(graph, one)


def test_stale_cached_decision_is_measured_again(tmp_path):
    from walle_core.search import PlanDecision

    graph = _chain(512, matmuls=3)
    backends = [FastMatmulBackend(), ReferenceBackend()]
    cache = PlanCache(tmp_path / "plans.json")
    cache.put(cache.key(graph, backends), PlanDecision("gone", ["no_such_backend"] * 4, {"gone": 1.0}))
    timer = ScriptedTimer({ACCEL_PLAN: 0.001, HOST_PLAN: 0.004})
    assigner = MeasuringAssigner(_fixed_cost(), cache, timer)
    assert assigner.assign(graph, backends) == [0, 0, 0, 1] and not assigner.last_cache_hit
    assert cache.get(cache.key(graph, backends)).winner == "cost+fast_matmul"


class CountingBackend(ReferenceBackend):
    """The reference backend, counting segment runs and optionally sleeping in each."""

    name = "counting"

    def __init__(self, threads: int = 1, delay_s: float = 0.0) -> None:
        super().__init__(threads)
        self.runs = 0
        self.delay_s = delay_s

    def compile(self, segment):
        exe = super().compile(segment)
        backend = self

        class Counted:
            def run(self, inputs):
                backend.runs += 1
                time.sleep(backend.delay_s)
                return exe.run(inputs)

        return Counted()


class SlowBackend(CountingBackend):
    name = "slow"


def test_time_plans_drops_hopeless_candidates_after_warmup():
    graph = _chain(8, matmuls=2)
    fast, slow = CountingBackend(), SlowBackend(delay_s=0.05)
    times = time_plans(graph, [fast, slow], {"fast": [0, 0, 0], "slow": [1, 1, 1]}, warmup=2, repeat=5)
    assert fast.runs == 2 + 5  # one segment, run every round
    assert slow.runs == 2  # more than 3x slower after warm-up: not timed further
    assert times["slow"] >= 0.05 > times["fast"] > 0


def test_node_times_compile_each_node_alone():
    graph = _chain(8, matmuls=2)
    backend = CountingBackend()
    times = node_times(graph, [backend], [0, 0, 0], warmup=1, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert backend.runs == 3 * 4


def test_predicted_times_follow_the_profiles():
    graph = _chain(64, matmuls=3)
    backends = [FastMatmulBackend(), ReferenceBackend()]
    model = CostModel(backends, {"reference": HOST, "fast_matmul": ACCEL})
    choice = [0, 0, 0, 1]
    per_node, transfers = predicted_times(graph, backends, choice, model)
    for node, j, got in zip(graph.nodes, choice, per_node):
        p = ACCEL if j == 0 else HOST
        want = node_flops(node, graph.types) / p.flops_per_s + node_bytes(node, graph.types) / p.bytes_per_s
        assert got == pytest.approx(want + p.launch_s)
    nbytes = 64 * 64 * 4
    # x goes host -> accel, the last product accel -> host; tanh's output is already on the host
    want = nbytes / ACCEL.bytes_per_s + ACCEL.launch_s
    want += nbytes / ACCEL.bytes_per_s + ACCEL.launch_s + nbytes / HOST.bytes_per_s + HOST.launch_s
    assert transfers == pytest.approx(want)


@pytest.mark.parametrize("a,b,rho", [
    ([10, 20, 30, 40, 50], [1, 3, 2, 5, 4], 0.8),  # 1 - 6 * 4 / (5 * 24)
    ([1, 2, 3], [9, 5, 1], -1.0),
    ([1, 2, 2, 3], [1, 3, 2, 4], 4.5 / np.sqrt(4.5 * 5.0)),  # ties take their average rank
])
def test_rank_correlation(a, b, rho):
    assert rank_correlation(a, b) == pytest.approx(rho)


def test_rank_correlation_of_constant_values_is_undefined():
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="3 values against 2"):
        rank_correlation([1, 2, 3], [1, 2])


def test_measure_search_session_is_correct_and_reuses_its_decision(tmp_path, monkeypatch):
    from walle_core import search

    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path))
    model = _topk_model()
    x = np.random.default_rng(4).standard_normal((4, 16)).astype(np.float32)
    want = wc.load(model, backend="reference").run({"x": x})
    got = wc.load(model, backend="auto", search="measure").run({"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "plans.json").exists()

    def no_timing(*args, **kwargs):
        raise AssertionError("the second load must reuse the cached decision")

    monkeypatch.setattr(search, "time_plans", no_timing)
    again = wc.load(model, backend="auto", search="measure").run({"x": x})
    for name in want:
        np.testing.assert_allclose(again[name], want[name], rtol=1e-5, atol=1e-6)


def test_unknown_search_is_rejected():
    with pytest.raises(wc.WalleError, match="'measure'"):
        wc.load(_topk_model(), search="fastest")


def test_convolutions_use_the_measured_convolution_rate():
    from walle_core.search import CostModel

    b = GraphBuilder()
    x = b.add_input("x", TensorType(F32, (1, 8, 16, 16)))
    w = b.constant(np.ones((8, 8, 3, 3), np.float32))
    b.graph.outputs = [b.emit1(Op.CONV2D, [x, w], ops.Conv2DAttrs(pads=(1, 1, 1, 1)))]
    node, types = b.graph.nodes[0], b.graph.types
    fast_gemm_slow_conv = BackendProfile(1e12, 1e10, 1e-6, conv_flops_per_s=1e9)
    balanced = BackendProfile(1e10, 1e10, 1e-6, conv_flops_per_s=1e10)
    backend = ReferenceBackend()
    slow = CostModel([backend], {"reference": fast_gemm_slow_conv}).node_cost(node, types, backend)
    even = CostModel([backend], {"reference": balanced}).node_cost(node, types, backend)
    assert slow > 5 * even
