"""Each optimisation pass leaves results unchanged (checked on the reference backend)."""

import copy

import numpy as np

from walle_core import ops
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import BinaryFn, Op, UnaryFn
from walle_core.optimize import eliminate_dead_code, fuse_epilogues
from walle_core.reference import run_graph

rng = np.random.default_rng(7)


def _conv_block():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 3, 8, 8)))
    w = b.constant(rng.standard_normal((3, 3, 3, 3)).astype(np.float32))
    bias = b.constant(rng.standard_normal(3).astype(np.float32))
    c = b.emit1(Op.CONV2D, [x, w, bias], ops.Conv2DAttrs(pads=(1, 1, 1, 1), has_bias=True))
    s = b.emit1(Op.BINARY, [x, c], ops.BinaryAttrs(BinaryFn.ADD))  # residual, conv on the right
    r = b.emit1(Op.UNARY, [s], ops.UnaryAttrs(UnaryFn.CLIP, 0.0, 6.0))
    w2 = b.constant(rng.standard_normal((192, 10)).astype(np.float32))
    flat = b.emit1(Op.RASTER, [r], ops.RasterAttrs((1, 192), (ops.Region(0, (192,), 0, (1,), 0, (1,)),)))
    m = b.emit1(Op.MATMUL, [flat, w2], ops.MatMulAttrs())
    o = b.emit1(Op.UNARY, [m], ops.UnaryAttrs(UnaryFn.SIGMOID))
    dead = b.emit1(Op.UNARY, [m], ops.UnaryAttrs(UnaryFn.EXP))
    b.graph.outputs = [o]
    return b.graph, dead


def test_dead_code_removed():
    g, dead = _conv_block()
    n = len(g.nodes)
    eliminate_dead_code(g)
    assert len(g.nodes) == n - 1
    assert all(dead not in node.outputs for node in g.nodes)


def test_epilogue_fusion_is_equivalent():
    g, _ = _conv_block()
    eliminate_dead_code(g)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = run_graph(copy.deepcopy(g), {"x": x})
    fuse_epilogues(g)
    assert [n.op for n in g.nodes] == [Op.CONV2D, Op.RASTER, Op.MATMUL]
    conv = g.nodes[0]
    assert conv.attrs.has_residual and conv.attrs.activation.fn is UnaryFn.CLIP
    assert g.nodes[2].attrs.activation.fn is UnaryFn.SIGMOID
    np.testing.assert_allclose(run_graph(g, {"x": x})[0], want[0], rtol=1e-5, atol=1e-6)


def test_no_fusion_when_intermediate_is_shared():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (2, 4)))
    w = b.constant(np.ones((4, 4), np.float32))
    m = b.emit1(Op.MATMUL, [x, w], ops.MatMulAttrs())
    r = b.emit1(Op.UNARY, [m], ops.UnaryAttrs(UnaryFn.RELU))
    b.graph.outputs = [r, m]
    fuse_epilogues(b.graph)
    assert len(b.graph.nodes) == 2


def test_batchnorm_style_affine_folds_into_conv():
    from walle_core.optimize import fold_affine_into_conv

    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 4, 6, 6)))
    w = b.constant(rng.standard_normal((4, 4, 3, 3)).astype(np.float32))
    c = b.emit1(Op.CONV2D, [x, w], ops.Conv2DAttrs(pads=(1, 1, 1, 1)))
    scale = b.constant(rng.standard_normal((4, 1, 1)).astype(np.float32))
    shift = b.constant(rng.standard_normal((1, 4, 1, 1)).astype(np.float32))
    m = b.emit1(Op.BINARY, [c, scale], ops.BinaryAttrs(BinaryFn.MUL))
    a = b.emit1(Op.BINARY, [shift, m], ops.BinaryAttrs(BinaryFn.ADD))
    r = b.emit1(Op.UNARY, [a], ops.UnaryAttrs(UnaryFn.RELU))
    b.graph.outputs = [r]
    g = b.graph
    xv = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = run_graph(copy.deepcopy(g), {"x": xv})[0]
    fold_affine_into_conv(g)
    eliminate_dead_code(g)
    assert [n.op for n in g.nodes] == [Op.CONV2D, Op.UNARY]
    np.testing.assert_allclose(run_graph(g, {"x": xv})[0], want, rtol=1e-5, atol=1e-5)


def test_affine_with_spatial_constant_is_not_folded():
    from walle_core.optimize import fold_affine_into_conv

    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 2, 3, 3)))
    w = b.constant(np.ones((2, 2, 1, 1), np.float32))
    c = b.emit1(Op.CONV2D, [x, w], ops.Conv2DAttrs())
    k = b.constant(np.arange(3, dtype=np.float32))  # varies along W, not per channel
    m = b.emit1(Op.BINARY, [c, k], ops.BinaryAttrs(BinaryFn.MUL))
    b.graph.outputs = [m]
    fold_affine_into_conv(b.graph)
    assert len(b.graph.nodes) == 2
