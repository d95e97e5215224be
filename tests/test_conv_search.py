"""cpu_x86's choice of convolution algorithm: the candidates per shape, the cost model and its
calibration, timed confirmation with decisions kept on disk, and the end-to-end effect on a
session and on `walle plan`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from numpy_oracles import np_conv
from onnx import helper
from onnx_models import make_model

pytest.importorskip("walle_cpu_x86._ext")

import walle_core as wc
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Conv2DAttrs, Op
from walle_cpu_x86 import _ext
from walle_cpu_x86 import conv_search as cs
from walle_cpu_x86.conv_search import (
    DEPTHWISE,
    GEMM,
    GEMM_ROWS,
    WINOGRAD2,
    WINOGRAD4,
    WINOGRAD6,
    ConvChooser,
    ConvShape,
    Rates,
    calibrate,
    candidates,
    predict,
)
from walle_cpu_x86.plugin import CpuX86Backend

NR = 16


def conv(c: int, hw: int, o: int, k: int = 3, stride: int = 1, groups: int = 1) -> ConvShape:
    pad = k // 2
    out = (hw + 2 * pad - k) // stride + 1
    return ConvShape(1, c, hw, hw, o, k, k, out, out, (stride, stride), (1, 1), (pad,) * 4, groups)


RATES = Rates(gemm_macs=40e9, transform2_macs=6e9, transform4_macs=4e9, transform6_macs=3e9, im2col_bytes=7e9,
              depthwise_macs=8e9, gathered_macs=35e9, launch_s=5e-6)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(cs.SEARCH_ENV, raising=False)
    monkeypatch.delenv(cs.WINOGRAD_ENV, raising=False)


def test_candidates_follow_the_kernels_that_exist() -> None:
    assert candidates(conv(64, 56, 64), NR) == [GEMM, WINOGRAD2, WINOGRAD4, WINOGRAD6]
    # Winograd needs stride 1; a stride-2 window may read its taps from the image as pixel rows
    assert candidates(conv(64, 56, 64, stride=2), NR) == [GEMM, GEMM_ROWS]
    assert candidates(conv(4, 56, 64, stride=2), NR) == [GEMM]  # a stem reads them that way already
    assert candidates(conv(64, 56, 64, k=1, stride=2), NR) == [GEMM]  # a 1x1 window has no taps to read
    assert candidates(conv(64, 56, 64, k=1), NR) == [GEMM]
    assert candidates(conv(4, 56, 64), NR) == [GEMM]  # too few channels for the transforms to pay
    assert candidates(conv(32, 56, 32, groups=32), NR) == [DEPTHWISE]
    assert candidates(conv(64, 56, 64, groups=2), NR) == [GEMM]
    # a transformed image over the native 64 MiB workspace bound is never offered
    assert candidates(conv(64, 400, 64), NR) == [GEMM]


def test_cost_model_charges_each_rate_its_work() -> None:
    shape = conv(64, 56, 64)
    assert predict(shape, GEMM, RATES, NR) == pytest.approx(
        5e-6 + shape.macs / 40e9 + 64 * 9 * 56 * 56 * 4 / 7e9)
    one_by_one = conv(64, 56, 64, k=1)
    assert predict(one_by_one, GEMM, RATES, NR) == pytest.approx(5e-6 + one_by_one.macs / 40e9)
    # no im2col matrix with the pixels as rows: only the multiply-adds, at their own rate
    down = conv(128, 56, 128, stride=2)
    assert predict(down, GEMM_ROWS, RATES, NR) == pytest.approx(5e-6 + down.macs / 35e9)
    assert predict(down, GEMM, RATES, NR) == pytest.approx(5e-6 + down.macs / 40e9 + 128 * 9 * 28 * 28 * 4 / 7e9)
    tiles = 14 * 14  # F(4,3) on 56x56
    gemm = 36 * 64 * 64 * (-(-tiles // NR) * NR)
    transforms = tiles * (64 * 2 * 216 + 64 * (4 * 36 + 16 * 6))
    assert predict(shape, WINOGRAD4, RATES, NR) == pytest.approx(5e-6 + gemm / 40e9 + transforms / 4e9)
    tiles = 10 * 10  # F(6,3) on 56x56: 60x60 outputs, the last tile row and column partly padding
    gemm = 64 * 64 * 64 * (-(-tiles // NR) * NR)
    transforms = tiles * (64 * 2 * 512 + 64 * (6 * 64 + 36 * 8))
    assert predict(shape, WINOGRAD6, RATES, NR) == pytest.approx(5e-6 + gemm / 40e9 + transforms / 3e9)
    # a 7x7 map has 16 F(2,3) tiles but only 4 F(4,3) tiles, padded to a 16-column panel
    small = conv(512, 7, 512)
    assert predict(small, WINOGRAD2, RATES, NR) < predict(small, GEMM, RATES, NR) < predict(small, WINOGRAD4, RATES, NR)
    # a 24x24 map has 36 F(4,3) tiles (three panels, the last a quarter full) but 16 F(6,3) ones
    wide = conv(512, 24, 512)
    assert predict(wide, WINOGRAD6, RATES, NR) < predict(wide, WINOGRAD4, RATES, NR)


def test_calibration_recovers_the_rates_it_was_timed_with() -> None:
    calls = []

    def timer(shape: ConvShape, algorithm: str) -> float:
        calls.append((shape, algorithm))
        return predict(shape, algorithm, RATES, NR)

    fitted = calibrate(timer, NR)
    for field in Rates.__dataclass_fields__:
        assert getattr(fitted, field) == pytest.approx(getattr(RATES, field), rel=1e-6), field
    assert len(calls) == 7 * cs.CALIBRATION_ROUNDS


def test_calibration_keeps_each_timings_best_round() -> None:
    """A burst of load during one round slows the timings of that round only."""
    rounds = iter(range(10_000))

    def timer(shape: ConvShape, algorithm: str) -> float:
        slow = 3.0 if next(rounds) < 7 else 1.0  # the whole first round is disturbed
        return predict(shape, algorithm, RATES, NR) * slow

    fitted = calibrate(timer, NR)
    assert fitted.gemm_macs == pytest.approx(RATES.gemm_macs, rel=1e-6)
    assert fitted.transform4_macs == pytest.approx(RATES.transform4_macs, rel=1e-6)
    assert fitted.transform6_macs == pytest.approx(RATES.transform6_macs, rel=1e-6)
    assert fitted.gathered_macs == pytest.approx(RATES.gathered_macs, rel=1e-6)


def test_rates_are_measured_once_per_machine(tmp_path) -> None:
    timed = []

    def timer(shape: ConvShape, algorithm: str) -> float:
        timed.append(algorithm)
        return predict(shape, algorithm, RATES, NR)

    first = ConvChooser("avx2|1", NR, timer)
    shape = conv(64, 56, 64)
    assert first.choose(shape).algorithm == min(candidates(shape, NR), key=lambda a: predict(shape, a, RATES, NR))
    assert len(timed) == 7 * cs.CALIBRATION_ROUNDS
    second = ConvChooser("avx2|1", NR, lambda *a: pytest.fail("calibrated again"))
    assert second.rates == first.rates
    # another thread count is another calibration
    assert ConvChooser("avx2|2", NR, timer).rates == first.rates
    assert len(timed) == 14 * cs.CALIBRATION_ROUNDS


@pytest.mark.parametrize("damage", ["not json", '{"v3|x": 1}', "[]", "rates"])
def test_a_damaged_cache_is_measured_again(tmp_path, damage) -> None:
    chooser = ConvChooser("avx2|1", NR, lambda s, a: predict(s, a, RATES, NR))
    path = tmp_path / "cache" / "cpu_x86_rates.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "rates":  # the right key, a value of the wrong type
        damage = json.dumps({chooser.device_key: {**{f: 1.0 for f in Rates.__dataclass_fields__},
                                                  "gemm_macs": "fast"}})
    path.write_text(damage)
    for field in Rates.__dataclass_fields__:
        assert getattr(chooser.rates, field) == pytest.approx(getattr(RATES, field), rel=1e-6), field


def test_measure_mode_times_every_candidate_once_and_remembers() -> None:
    timings = {GEMM: 3e-3, WINOGRAD2: 1e-3, WINOGRAD4: 2e-3, WINOGRAD6: 2.5e-3}  # F(2,3) wins against the model
    timed = []

    def timer(shape: ConvShape, algorithm: str) -> float:
        if shape == conv(64, 56, 64):
            timed.append(algorithm)
            return timings[algorithm]
        return predict(shape, algorithm, RATES, NR)

    choice = ConvChooser("avx2|1", NR, timer, mode="measure").choose(conv(64, 56, 64))
    assert (choice.algorithm, choice.measured_s) == (WINOGRAD2, 1e-3)
    assert sorted(timed) == sorted(timings)
    again = ConvChooser("avx2|1", NR, lambda *a: pytest.fail("timed again"), mode="measure")
    assert again.choose(conv(64, 56, 64)) == choice
    # a single candidate needs no timing
    assert again.choose(conv(64, 56, 64, k=1)).measured_s is None


def test_unknown_search_mode_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv(cs.SEARCH_ENV, "fastest")
    with pytest.raises(BackendError, match="WALLE_CONV_SEARCH='fastest'"):
        ConvChooser("avx2|1", NR, lambda *a: 1.0)


def _conv_model(c: int, hw: int, o: int) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, {"x": x}, ["y"], {"w": w}), x


def test_session_runs_the_measured_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(cs.SEARCH_ENV, "measure")
    model, x = _conv_model(16, 20, 16)
    session = wc.load(model, backend="cpu_x86")
    decisions = json.loads((tmp_path / "cache" / "cpu_x86_conv.json").read_text())
    (entry,) = decisions.values()
    assert set(entry["timings"]) == {GEMM, WINOGRAD2, WINOGRAD4, WINOGRAD6}
    assert entry["algorithm"] == min(entry["timings"], key=entry["timings"].get)
    plan = session.plan_for({"x": x})
    (exe,) = plan.executables
    # only Winograd needs the shared workspace: the plan runs what was decided
    assert (exe.plan.workspace_bytes > 0) == (entry["algorithm"] != GEMM)
    from onnx.reference import ReferenceEvaluator

    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)


def test_backend_names_and_costs_its_choice(monkeypatch) -> None:
    model, x = _conv_model(64, 28, 64)
    session = wc.load(model, backend="cpu_x86")
    plan = session.plan_for({"x": x})
    node = plan.graph.nodes[0]
    backend = CpuX86Backend()
    assert backend.algorithm(node, plan.graph.types) in {GEMM, WINOGRAD2, WINOGRAD4, WINOGRAD6}
    assert 0 < backend.estimate_cost(node, plan.graph.types) < 1.0
    monkeypatch.setenv(cs.WINOGRAD_ENV, "0")
    assert CpuX86Backend().algorithm(node, plan.graph.types) == "forced gemm"
    assert CpuX86Backend().estimate_cost(node, plan.graph.types) is None


def test_a_stride2_window_runs_in_the_chosen_orientation(tmp_path, monkeypatch) -> None:
    """Whichever orientation the search picks for a stride-2 window is what the plan runs, and
    both give the same bits: each output is the same taps' multiply-adds in the same order."""
    monkeypatch.setenv(cs.SEARCH_ENV, "measure")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 24, 19, 19)).astype(np.float32)
    w = (rng.standard_normal((84, 24, 3, 3)) * 0.1).astype(np.float32)
    b = GraphBuilder()
    b.add_input("x", TensorType(x.dtype, x.shape))
    b.graph.types["w"] = TensorType(w.dtype, w.shape)
    (y,) = b.emit(Op.CONV2D, ["x", "w"], Conv2DAttrs(strides=(2, 2), pads=(1, 1, 1, 1)))
    segment = Segment(b.graph.nodes, ["x"], [y], dict(b.graph.types), {"w": w})
    got = {}
    for winner in (GEMM, GEMM_ROWS):
        monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path / winner))  # a decision of its own
        monkeypatch.setattr(CpuX86Backend, "_time_conv",
                            lambda self, shape, algorithm, winner=winner: 1e-3 if algorithm == winner else 2e-3)
        backend = CpuX86Backend()
        assert backend.algorithm(segment.nodes[0], segment.types) == f"{winner} (timed)"
        exe = backend.compile(segment)
        (got[winner],) = exe.run([x])
        # the weights are packed as the GEMM's A (84 rows in panels of MR) or, with the pixels as
        # rows, as its B (84 columns in panels of NR)
        ((_op, _slot, packed),) = exe.plan.packed()
        mr, nr = _ext.micro_kernel("")
        floats = 216 * -(-84 // nr) * nr if winner == GEMM_ROWS else -(-84 // mr) * mr * 216
        assert packed.nbytes == 4 * floats
    np.testing.assert_array_equal(got[GEMM_ROWS], got[GEMM])
    # weights known only at run time: the last backend, which prefers the pixels as rows, packs
    # them per run as the GEMM's A instead
    b.add_input("w", TensorType(w.dtype, w.shape))
    runtime = Segment(b.graph.nodes, ["x", "w"], [y], dict(b.graph.types), {})
    (from_runtime,) = backend.compile(runtime).run([x, w])
    np.testing.assert_array_equal(from_runtime, got[GEMM])
    want = np_conv(x, w, None, (2, 2), (1, 1, 1, 1))
    np.testing.assert_allclose(got[GEMM_ROWS], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy,groups,message", [
    (3, 1, "convolution policy must be -1, 0 .GEMM., 1"),
    (1, 8, "a GEMM with the pixels as rows needs one group"),
])
def test_the_native_convolution_refuses_a_policy_it_has_no_kernel_for(policy, groups, message) -> None:
    x = np.zeros((1, 8, 9, 9), np.float32)
    w = np.zeros((8, 8 // groups, 3, 3), np.float32)
    b = GraphBuilder()
    b.add_input("x", TensorType(x.dtype, x.shape))
    b.graph.types["w"] = TensorType(w.dtype, w.shape)
    (y,) = b.emit(Op.CONV2D, ["x", "w"], Conv2DAttrs(strides=(2, 2), pads=(1, 1, 1, 1), groups=groups))
    segment = Segment(b.graph.nodes, ["x"], [y], dict(b.graph.types), {"w": w})
    with pytest.raises(BackendError, match=message):
        CpuX86Backend()._compile(segment, lambda node: policy)
