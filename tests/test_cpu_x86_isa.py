"""The cpu_x86 SIMD levels against each other: AVX2 and AVX-512 plans share their register tile's
width and add in the same order, so a whole network gives the same bits at both levels."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx_models import make_model

import walle_core as wc

_ext = pytest.importorskip("walle_cpu_x86")._ext

pytestmark = pytest.mark.skipif(_ext is None or _ext.best_isa() != "avx512",
                                reason="compares AVX-512 with AVX2: needs a CPU with AVX-512")


def _network(rng: np.random.Generator) -> tuple:
    """Every register tile variant a plan uses: a stem reading its taps from the image, a 3x3
    Winograd convolution, pointwise -> depthwise -> pointwise in 8-channel blocks with a residual,
    a stride-2 window with the pixels as rows read from the image, and a GEMV."""
    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    weights = {"stem": w(16, 3, 3, 3), "w3": w(32, 16, 3, 3), "expand": w(64, 32, 1, 1), "dw": w(64, 1, 3, 3),
               "project": w(32, 64, 1, 1), "down": w(96, 32, 3, 3), "fc": w(96, 10), "bias": w(64)}
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["s"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["s"], ["s1"]),
        helper.make_node("Conv", ["s1", "w3"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a1"]),
        helper.make_node("Conv", ["a1", "expand", "bias"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e1"]),
        helper.make_node("Conv", ["e1", "dw"], ["d"], pads=[1, 1, 1, 1], group=64),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d1"]),
        helper.make_node("Conv", ["d1", "project"], ["p"]),
        helper.make_node("Add", ["p", "a1"], ["r"]),
        helper.make_node("Conv", ["r", "down"], ["q"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["q"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    weights["lo"], weights["hi"] = np.array(0, np.float32), np.array(6, np.float32)
    x = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y", "r"], weights), {"x": x}


@pytest.mark.parametrize("threads", [1, 2])
def test_avx512_and_avx2_give_the_same_bits(tmp_path, monkeypatch, threads):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path / "cache"))
    # the algorithm fixed, not left to timings that may differ between the two loads
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", "4")
    model, feeds = _network(np.random.default_rng(11))
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    got = {}
    for isa in ("avx2", "avx512"):
        monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
        got[isa] = wc.load(path, backend="cpu_x86", threads=threads).run(feeds)
    want = dict(zip(["y", "r"], ReferenceEvaluator(model).run(None, feeds), strict=True))
    for name, value in want.items():
        np.testing.assert_array_equal(got["avx512"][name], got["avx2"][name])
        np.testing.assert_allclose(got["avx512"][name], value, rtol=1e-4, atol=1e-4 * np.abs(value).max())
