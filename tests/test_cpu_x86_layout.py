"""cpu_x86: activations a pointwise convolution passes to a depthwise one in 8-channel blocks.

The blocked path computes the same products in the same order as the plain one, so the tests
compare the two to the bit (WALLE_CPU_X86_BLOCKED=0 turns blocking off), and both against NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy_oracles import np_conv

from walle_core import ops
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Activation, Op, UnaryFn
from walle_cpu_x86 import CpuX86Backend, _ext
from walle_cpu_x86.layout import blocked_activations

pytestmark = pytest.mark.skipif(_ext is None or _ext.best_isa() == "portable", reason="needs AVX2")

rng = np.random.default_rng(7)

#: AVX2's register tile, (GEMM rows, columns): which edges are blocked depends on it
AVX2_TILE = (6, 16)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def expand_then_depthwise(x, w1, b1, act1, w2, b2, stride, extra_reader=False, residual=None):
    """x -> pointwise(w1, b1, act1) -> t -> depthwise k x k (w2, b2, relu6, pads k // 2) -> y;
    optionally t is also a segment output, or the pointwise conv adds a residual."""
    b = GraphBuilder()
    name = b.add_input("x", TensorType(x.dtype, x.shape))
    inputs = [name, b.constant(w1), b.constant(b1)]
    if residual is not None:
        inputs.append(b.add_input("r", TensorType(residual.dtype, residual.shape)))
    attrs = ops.Conv2DAttrs(activation=act1, has_bias=True, has_residual=residual is not None)
    (t,) = b.emit(Op.CONV2D, inputs, attrs)
    c = w2.shape[0]
    pad = w2.shape[2] // 2
    dw = ops.Conv2DAttrs((stride, stride), (pad,) * 4, groups=c, activation=Activation(UnaryFn.CLIP, 0.0, 6.0),
                         has_bias=True)
    (y,) = b.emit(Op.CONV2D, [t, b.constant(w2), b.constant(b2)], dw)
    g = b.graph
    outs = [y, t] if extra_reader else [y]
    return Segment(g.nodes, list(g.inputs), outs, dict(g.types), dict(g.constants)), t


def reference(x, w1, b1, fn, w2, b2, stride, residual=None):
    t = np_conv(x, w1, b1)
    if residual is not None:
        t = t + residual
    t = {UnaryFn.IDENTITY: t, UnaryFn.CLIP: np.clip(t, 0, 6), UnaryFn.SIGMOID: 1 / (1 + np.exp(-t))}[fn]
    pad = w2.shape[2] // 2
    return np.clip(np_conv(t, w2, b2, (stride, stride), (pad,) * 4, groups=w2.shape[0]), 0, 6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [
    # (x shape, output channels, activation, dw stride[, dw window, else 3]): pixels not a
    # multiple of the 6-row tile, 24 channels (a last tile of 8 columns), K over one 256 block,
    # two images, an activation the register tile cannot apply, stride 2 (rows under 32 pixels
    # with 3x3 windows are read in place with the padding skipped; under 8, the padding columns
    # known at run time only); rows of 32 or more output pixels, which the depthwise
    # kernel reads in place with patches at the borders (a row end in the middle of a group, odd
    # input widths); 5x5 windows on rows of 20, which go through a padded copy. Rows of 8 or more
    # in place end with a whole group of 8, the first in the left padding and the last in the
    # right one: rows of exactly 8 (both in one group) at strides 1 and 2, of 16 at stride 1, of
    # 10 at stride 2 from an odd width (the last window in the right padding), and of 28 at
    # stride 2 (groups inside the row too)
    ((1, 16, 14, 14), 96, UnaryFn.CLIP, 1),
    ((2, 24, 9, 11), 24, UnaryFn.IDENTITY, 1),
    ((1, 300, 7, 9), 40, UnaryFn.CLIP, 2),
    ((1, 8, 13, 13), 32, UnaryFn.SIGMOID, 2),
    ((2, 8, 6, 37), 16, UnaryFn.CLIP, 1),
    ((1, 16, 9, 32), 8, UnaryFn.IDENTITY, 1),
    ((1, 8, 7, 67), 24, UnaryFn.CLIP, 2),
    ((1, 8, 5, 64), 16, UnaryFn.CLIP, 2),
    ((1, 16, 10, 20), 24, UnaryFn.CLIP, 1, 5),
    ((1, 8, 8, 8), 16, UnaryFn.CLIP, 1),
    ((1, 8, 15, 15), 16, UnaryFn.CLIP, 2),
    ((1, 8, 6, 16), 16, UnaryFn.CLIP, 1),
    ((1, 8, 9, 19), 16, UnaryFn.CLIP, 2),
    ((1, 8, 12, 56), 16, UnaryFn.CLIP, 2),
], ids=["expand", "24ch-2img", "k300-s2", "sigmoid", "wide-2img", "wide32", "wide-s2-odd", "wide-s2-even",
        "copied-5x5", "row8", "row8-s2", "row16", "row10-s2-odd", "row28-s2"])
def test_blocked_activation_matches_plain_layout(monkeypatch, threads, case):
    xs, c, fn, stride, k = case if len(case) == 5 else (*case, 3)
    x, w1, b1, w2, b2 = f32(*xs), f32(c, xs[1], 1, 1), f32(c), f32(c, 1, k, k), f32(c)
    act = Activation(fn, 0.0, 6.0) if fn is UnaryFn.CLIP else Activation(fn)
    seg, t = expand_then_depthwise(x, w1, b1, act, w2, b2, stride)
    assert blocked_activations(seg, AVX2_TILE) == {t}
    got = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("WALLE_CPU_X86_BLOCKED", mode)
        (got[mode],) = CpuX86Backend(threads=threads).compile(seg).run([x])
    np.testing.assert_array_equal(got["1"], got["0"])
    np.testing.assert_allclose(got["1"], reference(x, w1, b1, fn, w2, b2, stride), rtol=1e-4, atol=1e-4)


def depthwise_then_project(x, w1, b1, stride, w2, b2, residual=None, extra_reader=False):
    """x -> depthwise 3x3 (w1, b1, relu6) -> t -> pointwise (w2, b2, + residual) -> y."""
    b = GraphBuilder()
    name = b.add_input("x", TensorType(x.dtype, x.shape))
    c = w1.shape[0]
    dw = ops.Conv2DAttrs((stride, stride), (1, 1, 1, 1), groups=c, activation=Activation(UnaryFn.CLIP, 0.0, 6.0),
                         has_bias=True)
    (t,) = b.emit(Op.CONV2D, [name, b.constant(w1), b.constant(b1)], dw)
    inputs = [t, b.constant(w2), b.constant(b2)]
    if residual is not None:
        inputs.append(b.add_input("r", TensorType(residual.dtype, residual.shape)))
    (y,) = b.emit(Op.CONV2D, inputs, ops.Conv2DAttrs(has_bias=True, has_residual=residual is not None))
    g = b.graph
    outs = [y, t] if extra_reader else [y]
    return Segment(g.nodes, list(g.inputs), outs, dict(g.types), dict(g.constants)), t


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [
    # (x shape, project channels, dw stride, residual): pixels over one staging block of the
    # GEMM (120 rows) and not a multiple of its 6-row tile, K over one 256 block, project
    # channels not a multiple of the 16-column tile, two images, a wide stride-2 layer
    ((1, 32, 20, 23), 16, 1, True),
    ((2, 264, 7, 7), 32, 1, False),
    ((1, 16, 7, 7), 40, 1, True),
    ((1, 24, 66, 67), 16, 2, False),
], ids=["460px-res", "k264-2img", "40out", "wide-s2"])
def test_blocked_depthwise_output_matches_plain_layout(monkeypatch, threads, case):
    xs, o, stride, with_residual = case
    c = xs[1]
    x, w1, b1, w2, b2 = f32(*xs), f32(c, 1, 3, 3), f32(c), f32(o, c, 1, 1), f32(o)
    oh, ow = (xs[2] - 1) // stride + 1, (xs[3] - 1) // stride + 1
    residual = f32(xs[0], o, oh, ow) if with_residual else None
    seg, t = depthwise_then_project(x, w1, b1, stride, w2, b2, residual)
    assert blocked_activations(seg, AVX2_TILE) == {t}
    feeds = [x] if residual is None else [x, residual]
    got = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("WALLE_CPU_X86_BLOCKED", mode)
        (got[mode],) = CpuX86Backend(threads=threads).compile(seg).run(feeds)
    np.testing.assert_array_equal(got["1"], got["0"])
    t_ref = np.clip(np_conv(x, w1, b1, (stride, stride), (1, 1, 1, 1), groups=c), 0, 6)
    want = np_conv(t_ref, w2, b2) + (0 if residual is None else residual)
    np.testing.assert_allclose(got["1"], want, rtol=1e-4, atol=1e-4)


def test_depthwise_to_pointwise_is_blocked_where_the_tiles_fill_as_well():
    """With the pixels as GEMM rows, 40 output channels fill 16-column tiles to 83 %, and 6-row
    tiles with the channels as rows to 95 %: at 56x56 that stays NCHW, at 7x7 (where 49 pixels
    fill 16-column tiles to 77 %) it is blocked."""
    for side, expected in ((56, False), (7, True)):
        x = f32(1, 16, side, side)
        seg, t = depthwise_then_project(x, f32(16, 1, 3, 3), f32(16), 1, f32(40, 16, 1, 1), f32(40))
        assert blocked_activations(seg, AVX2_TILE) == ({t} if expected else frozenset())


def inverted_residuals(x, c, expand, blocks, extra_reader=False):
    """MobileNetV2's stage: x -> depthwise -> pointwise c -> (expand -> depthwise -> project +
    residual) x blocks -> pointwise 32 -> y, all with bias; the activations between the
    convolutions, except that last one's output (and, with extra_reader, the first block's
    output, also a segment output), may stay in blocks."""
    b = GraphBuilder()
    h = b.add_input("x", TensorType(x.dtype, x.shape))
    relu6 = Activation(UnaryFn.CLIP, 0.0, 6.0)
    weights = []

    def conv(inputs, o, k=1, groups=1, act=None, residual=None):
        w, bias = f32(o, c_of[inputs[0]] // groups, k, k), f32(o)
        weights.append((w, bias, groups, k))
        names = [inputs[0], b.constant(w), b.constant(bias)] + ([residual] if residual else [])
        attrs = ops.Conv2DAttrs(pads=((k // 2,) * 4), groups=groups, activation=act or Activation(), has_bias=True,
                                has_residual=residual is not None)
        (y,) = b.emit(Op.CONV2D, names, attrs)
        c_of[y] = o
        return y

    c_of = {h: x.shape[1]}
    h = conv([conv([h], x.shape[1], k=3, groups=x.shape[1], act=relu6)], c)
    outs = []
    for i in range(blocks):
        e = conv([h], expand, act=relu6)
        d = conv([e], expand, k=3, groups=expand, act=relu6)
        h = conv([d], c, residual=h)
        if i == 0 and extra_reader:
            outs.append(h)
    y = conv([h], 32)
    g = b.graph
    return Segment(g.nodes, list(g.inputs), [y, *outs], dict(g.types), dict(g.constants)), weights


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("side", [14, 9])
def test_inverted_residual_chain_stays_blocked(monkeypatch, threads, side):
    """Projection -> expansion and the residual chain through a stage stay in blocks: each
    projection reads its depthwise input and its residual in blocks and writes blocks, each
    expansion reads blocks (in place, tiles of 6 pixels) and writes blocks. Bit-identical to the
    NCHW plan, and equal to NumPy; 14x14 and 9x9 leave partial row tiles (196 and 81 pixels)."""
    x = f32(1, 16, side, side)
    seg, weights = inverted_residuals(x, 32, 48, 2)
    blocked = blocked_activations(seg, AVX2_TILE)
    convs = [n for n in seg.nodes if n.op is Op.CONV2D]
    assert all(n.outputs[0] in blocked for n in convs[:-1]) and convs[-1].outputs[0] not in blocked
    got = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("WALLE_CPU_X86_BLOCKED", mode)
        (got[mode],) = CpuX86Backend(threads=threads).compile(seg).run([x])
    np.testing.assert_array_equal(got["1"], got["0"])
    d0 = np.clip(np_conv(x, weights[0][0], weights[0][1], pads=(1, 1, 1, 1), groups=16), 0, 6)
    h = np_conv(d0, weights[1][0], weights[1][1])
    for i in range(2):
        (we, be, _, _), (wd, bd, g, _), (wp, bp, _, _) = weights[2 + 3 * i: 5 + 3 * i]
        e = np.clip(np_conv(h, we, be), 0, 6)
        d = np.clip(np_conv(e, wd, bd, pads=(1, 1, 1, 1), groups=g), 0, 6)
        h = np_conv(d, wp, bp) + h
    want = np_conv(h, weights[-1][0], weights[-1][1])
    np.testing.assert_allclose(got["1"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())  # float32 sums


def test_a_chain_with_a_reader_that_takes_no_blocks_stays_nchw(monkeypatch):
    """The first block's output is also a segment output, so it stays NCHW. So does what the
    first projection adds as its residual (a residual has its output's layout), and what the
    second projection writes, since it adds that NCHW output as its residual."""
    x = f32(1, 16, 9, 9)
    seg, _ = inverted_residuals(x, 32, 48, 2, extra_reader=True)
    blocked = blocked_activations(seg, AVX2_TILE)
    projections = [n for n in seg.nodes if n.op is Op.CONV2D and n.attrs.has_residual]
    first_out = seg.outputs[1]
    assert projections[0].outputs[0] == first_out and projections[1].inputs[-1] == first_out
    assert {first_out, projections[0].inputs[-1], projections[1].outputs[0]}.isdisjoint(blocked)
    assert projections[1].inputs[0] in blocked  # its depthwise input still is
    got = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("WALLE_CPU_X86_BLOCKED", mode)
        got[mode] = CpuX86Backend().compile(seg).run([x])
    for a, b in zip(got["1"], got["0"]):
        np.testing.assert_array_equal(a, b)


def test_a_pointwise_convolution_is_blocked_on_one_side_only():
    """depthwise -> pointwise -> depthwise: the middle convolution writes blocks (the measured
    gain of that edge came first), so it reads NCHW."""
    x = f32(1, 8, 6, 6)
    b = GraphBuilder()
    dw = ops.Conv2DAttrs(pads=(1, 1, 1, 1), groups=8)
    (t1,) = b.emit(Op.CONV2D, [b.add_input("x", TensorType(x.dtype, x.shape)), b.constant(f32(8, 1, 3, 3))], dw)
    (t2,) = b.emit(Op.CONV2D, [t1, b.constant(f32(8, 8, 1, 1))], ops.Conv2DAttrs())
    (y,) = b.emit(Op.CONV2D, [t2, b.constant(f32(8, 1, 3, 3))], dw)
    g = b.graph
    seg = Segment(g.nodes, list(g.inputs), [y], dict(g.types), dict(g.constants))
    assert blocked_activations(seg, AVX2_TILE) == {t2}
    (got,) = CpuX86Backend().compile(seg).run([x])
    w = {n: g.constants[n] for n in g.constants}
    ws = [w[node.inputs[1]] for node in g.nodes]
    t = np_conv(x, ws[0], None, (1, 1), (1, 1, 1, 1), groups=8)
    want = np_conv(np_conv(t, ws[1], None), ws[2], None, (1, 1), (1, 1, 1, 1), groups=8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_only_a_private_pointwise_to_depthwise_edge_is_blocked():
    x, w1, b1, w2, b2 = f32(1, 8, 6, 6), f32(16, 8, 1, 1), f32(16), f32(16, 1, 3, 3), f32(16)
    act = Activation(UnaryFn.RELU)
    seg, t = expand_then_depthwise(x, w1, b1, act, w2, b2, 1)
    assert blocked_activations(seg, AVX2_TILE) == {t}
    assert blocked_activations(seg, None) == frozenset()  # the portable kernel: no blocked tile
    seg, _ = expand_then_depthwise(x, w1, b1, act, w2, b2, 1, extra_reader=True)
    assert blocked_activations(seg, AVX2_TILE) == frozenset()  # a segment output stays NCHW
    seg, _ = expand_then_depthwise(x, w1, b1, act, w2, b2, 1, residual=f32(1, 16, 6, 6))
    assert blocked_activations(seg, AVX2_TILE) == frozenset()  # no residual in the blocked store
    # read by two depthwise convolutions: each would want it, only one layout exists
    b = GraphBuilder()
    (t,) = b.emit(Op.CONV2D, [b.add_input("x", TensorType(x.dtype, x.shape)), b.constant(w1)], ops.Conv2DAttrs())
    dw = ops.Conv2DAttrs(pads=(1, 1, 1, 1), groups=16)
    (y1,) = b.emit(Op.CONV2D, [t, b.constant(w2)], dw)
    (y2,) = b.emit(Op.CONV2D, [t, b.constant(w2)], dw)
    g = b.graph
    seg = Segment(g.nodes, list(g.inputs), [y1, y2], dict(g.types), dict(g.constants))
    assert blocked_activations(seg, AVX2_TILE) == frozenset()
    # channels that do not fill whole blocks
    x, w1, b1, w2, b2 = f32(1, 8, 6, 6), f32(12, 8, 1, 1), f32(12), f32(12, 1, 3, 3), f32(12)
    seg, _ = expand_then_depthwise(x, w1, b1, act, w2, b2, 1)
    assert blocked_activations(seg, AVX2_TILE) == frozenset()


def test_blocking_env_is_validated(monkeypatch):
    x, w1, b1, w2, b2 = f32(1, 8, 6, 6), f32(16, 8, 1, 1), f32(16), f32(16, 1, 3, 3), f32(16)
    seg, _ = expand_then_depthwise(x, w1, b1, Activation(UnaryFn.RELU), w2, b2, 1)
    monkeypatch.setenv("WALLE_CPU_X86_BLOCKED", "yes")
    with pytest.raises(BackendError, match="WALLE_CPU_X86_BLOCKED='yes': expected 0 or 1"):
        CpuX86Backend().compile(seg)


def test_native_side_refuses_a_blocked_flag_it_cannot_honour():
    """The op record's layout flags are checked like every other field: a blocked input on a
    convolution that is not depthwise fails the plan with a message."""
    pool = _ext.ThreadPool(1)
    f32_code = _ext.dtype_names().index("float32")
    conv = _ext.op_names().index("conv2d")
    identity = _ext.unary_fns().index("identity")
    w = np.ones((4, 4, 1, 1), np.float32)
    tensors = [(f32_code, 4, [1, 4, 2, 2], 0, 0), (f32_code, 4, [4, 4, 1, 1], 3, 0), (f32_code, 4, [1, 4, 2, 2], 1, 0)]
    ints = [1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, identity, -1]
    consts = [w.reshape(-1).view(np.uint8)]
    _ext.Plan(tensors, consts, [0], [2], [(conv, 0, "conv", [0, 1], [2], ints + [0, 0], [0.0, 0.0])], 0, "", pool)
    with pytest.raises(ValueError, match="8-channel blocks need a depthwise convolution"):
        _ext.Plan(tensors, consts, [0], [2], [(conv, 0, "conv", [0, 1], [2], ints + [1, 0], [0.0, 0.0])], 0, "",
                  pool)
