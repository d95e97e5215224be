"""The RASTER data-movement helpers against NumPy, and the constant folding of LoweringContext."""

from __future__ import annotations

import numpy as np
import pytest

from walle_core.decompose import linalg, raster
from walle_core.decompose.context import LoweringContext
from walle_core.errors import ModelError, UnsupportedOpError, WalleError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import CastAttrs, Op
from walle_core.plugins import decomposition_rules
from walle_core.reference import run_graph


def data(*shape: int, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(shape) * 10).astype(dtype)


def runtime_ctx(*arrays: np.ndarray) -> tuple[LoweringContext, list[str]]:
    """A context whose inputs x0, x1 ... are graph inputs (not constants)."""
    ctx = LoweringContext(GraphBuilder())
    names = [ctx.builder.add_input(f"x{i}", TensorType(a.dtype, a.shape)) for i, a in enumerate(arrays)]
    return ctx, names


def run(ctx: LoweringContext, out: str, *arrays: np.ndarray) -> np.ndarray:
    graph = ctx.builder.graph
    graph.outputs = [out]
    return run_graph(graph, {f"x{i}": a for i, a in enumerate(arrays)})[0]


def single_raster(ctx: LoweringContext):
    nodes = ctx.builder.graph.nodes
    assert [n.op for n in nodes] == [Op.RASTER]
    return nodes[0].attrs


@pytest.mark.parametrize("perm", [(1, 0, 2, 3), (0, 2, 3, 1), (3, 2, 1, 0), (0, 1, 3, 2)])
def test_transpose(perm) -> None:
    x = data(2, 3, 4, 5)
    ctx, (name,) = runtime_ctx(x)
    y = raster.transpose(ctx, name, perm)
    np.testing.assert_array_equal(run(ctx, y, x), np.transpose(x, perm))
    attrs = single_raster(ctx)
    assert len(attrs.regions) == 1
    # (0, 2, 3, 1) moves one axis: [2] x [3] x [20] collapses to 3 dims at most
    assert len(attrs.regions[0].size) <= 4 - (perm[0] == 0)


def test_identity_moves_emit_nothing() -> None:
    x = data(2, 3)
    ctx, (name,) = runtime_ctx(x)
    assert raster.transpose(ctx, name, (0, 1)) == name
    assert raster.reshape(ctx, name, (2, 3)) == name
    assert raster.slice_axes(ctx, name, [0], [100], [1]) == name
    assert raster.broadcast_to(ctx, name, (2, 3)) == name
    assert ctx.builder.graph.nodes == []


def test_reshape_is_one_contiguous_region() -> None:
    x = data(2, 3, 4)
    ctx, (name,) = runtime_ctx(x)
    y = raster.reshape(ctx, name, (4, 6))
    np.testing.assert_array_equal(run(ctx, y, x), x.reshape(4, 6))
    region = single_raster(ctx).regions[0]
    assert region.size == (24,) and region.src_strides == (1,) and region.dst_strides == (1,)
    with pytest.raises(ModelError, match="cannot reshape"):
        raster.reshape(ctx, name, (5, 5))


@pytest.mark.parametrize("starts, ends, axes, steps, index", [
    ([1], [3], [0], [1], np.s_[1:3]),
    ([0, -3], [2, 100], [1, 2], [1, 2], np.s_[:, 0:2, -3::2]),
    ([-1], [-100], [2], [-1], np.s_[:, :, ::-1]),
    ([4, 5], [0, 1], [2, 1], [-2, -3], np.s_[:, 5:1:-3, 4:0:-2]),
    ([2], [1], [0], [1], np.s_[2:1]),
])
def test_slice(starts, ends, axes, steps, index) -> None:
    x = data(3, 6, 5)
    ctx, (name,) = runtime_ctx(x)
    y = raster.slice_axes(ctx, name, starts, ends, axes, steps)
    np.testing.assert_array_equal(run(ctx, y, x), x[index])
    assert len(single_raster(ctx).regions) <= 1


def test_slice_rejects_zero_step() -> None:
    ctx, (name,) = runtime_ctx(data(3))
    with pytest.raises(ModelError, match="step"):
        raster.slice_axes(ctx, name, [0], [3], [0], [0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis) -> None:
    arrays = [data(2, 3, 4), data(2, 3, 4) + 1, data(2, 3, 4) - 1]
    ctx, names = runtime_ctx(*arrays)
    y = raster.concat(ctx, names, axis)
    np.testing.assert_array_equal(run(ctx, y, *arrays), np.concatenate(arrays, axis))
    attrs = single_raster(ctx)
    assert len(attrs.regions) == 3 and all(len(r.size) <= 2 for r in attrs.regions)


def test_split() -> None:
    x = data(7, 2)
    ctx, (name,) = runtime_ctx(x)
    outs = raster.split(ctx, name, 0, [2, 0, 5])
    ctx.builder.graph.outputs = outs
    got = run_graph(ctx.builder.graph, {"x0": x})
    for g, e in zip(got, np.split(x, [2, 2])):
        np.testing.assert_array_equal(g, e)
    with pytest.raises(ModelError, match="split sizes"):
        raster.split(ctx, name, 0, [3, 3])


@pytest.mark.parametrize("src, dst", [((3, 1), (2, 3, 4)), ((1,), (5,)), ((4,), (3, 4)), ((2, 1, 3), (2, 4, 3))])
def test_broadcast_to(src, dst) -> None:
    x = data(*src)
    ctx, (name,) = runtime_ctx(x)
    y = raster.broadcast_to(ctx, name, dst)
    np.testing.assert_array_equal(run(ctx, y, x), np.broadcast_to(x, dst))
    region = single_raster(ctx).regions[0]
    assert 0 in region.src_strides
    with pytest.raises(ModelError, match="cannot broadcast"):
        raster.broadcast_to(ctx, name, ())


def test_pad_constant_is_fill_plus_one_region() -> None:
    x = data(2, 3, 4, dtype=np.int32)
    ctx, (name,) = runtime_ctx(x)
    y = raster.pad_constant(ctx, name, [0, 1, 2], [1, 0, 3], value=-5)
    np.testing.assert_array_equal(run(ctx, y, x), np.pad(x, ((0, 1), (1, 0), (2, 3)), constant_values=-5))
    attrs = single_raster(ctx)
    assert attrs.fill == -5.0 and len(attrs.regions) == 1


def test_pad_negative_crops() -> None:
    x = data(4, 5)
    ctx, (name,) = runtime_ctx(x)
    y = raster.pad_constant(ctx, name, [-1, 2], [1, -2])
    np.testing.assert_array_equal(run(ctx, y, x), np.pad(x[1:, :3], ((0, 1), (2, 0))))


@pytest.mark.parametrize("mode, numpy_mode", [("reflect", "reflect"), ("edge", "edge"), ("wrap", "wrap")])
def test_pad_modes(mode, numpy_mode) -> None:
    x = data(3, 4, 5)
    ctx, (name,) = runtime_ctx(x)
    begins, ends = [0, 3, 1], [2, 1, 4]
    y = raster.pad_mode(ctx, name, begins, ends, mode)
    np.testing.assert_array_equal(run(ctx, y, x), np.pad(x, list(zip(begins, ends)), mode=numpy_mode))
    nodes = ctx.builder.graph.nodes
    assert len(nodes) == 3 and all(len(n.attrs.regions) <= 3 for n in nodes)  # one RASTER per padded axis


def test_pad_reflect_too_wide_is_unsupported() -> None:
    ctx, (name,) = runtime_ctx(data(3))
    with pytest.raises(UnsupportedOpError, match="reflect"):
        raster.pad_mode(ctx, name, [3], [0], "reflect")


def test_tile_is_one_region() -> None:
    x = data(2, 3)
    ctx, (name,) = runtime_ctx(x)
    y = raster.tile(ctx, name, [3, 2])
    np.testing.assert_array_equal(run(ctx, y, x), np.tile(x, (3, 2)))
    assert len(single_raster(ctx).regions) == 1


def test_squeeze_unsqueeze_flatten() -> None:
    x = data(1, 3, 1, 4)
    ctx, (name,) = runtime_ctx(x)
    np.testing.assert_array_equal(run(ctx, raster.squeeze(ctx, name, None), x), x.reshape(3, 4))
    np.testing.assert_array_equal(run(ctx, raster.unsqueeze(ctx, name, [0, -1]), x), x.reshape(1, 1, 3, 1, 4, 1))
    np.testing.assert_array_equal(run(ctx, raster.flatten(ctx, name, 2), x), x.reshape(3, 4))
    with pytest.raises(ModelError, match="cannot squeeze axis 1"):
        raster.squeeze(ctx, name, [1])


def test_make_region_merges_and_drops_unit_dims() -> None:
    region = raster.make_region(0, (2, 1, 3, 4), 5, (12, 99, 4, 1), 0, (12, 12, 4, 1))
    assert region is not None
    assert region.size == (24,) and region.src_strides == (1,) and region.src_offset == 5
    assert raster.make_region(0, (2, 0), 0, (1, 1), 0, (1, 1)) is None


def test_constant_inputs_fold_instead_of_emitting() -> None:
    ctx = LoweringContext(GraphBuilder())
    c = ctx.constant(np.arange(6, dtype=np.int64).reshape(2, 3))
    y = raster.transpose(ctx, c, (1, 0))
    assert ctx.builder.graph.nodes == []
    np.testing.assert_array_equal(ctx.const_value(y), np.arange(6).reshape(2, 3).T)


def test_const_value_is_none_for_runtime_tensors() -> None:
    ctx, (name,) = runtime_ctx(data(2))
    assert ctx.const_value(name) is None


def test_builtin_rules_come_through_the_plugin_hook() -> None:
    rules = decomposition_rules()
    for op_type in ("Conv", "ConvTranspose", "Gemm", "Softmax", "Pad", "Einsum", "TopK", "CumSum"):
        assert ("", op_type) in rules


@pytest.mark.parametrize("src, dst", [(np.float32, np.int32), (np.int64, np.float64), (np.uint8, np.int8),
                                      (bool, np.uint8), (np.float16, np.int16)])
def test_cast_bitcast_reinterprets_bytes(src, dst) -> None:
    x = data(2, 3).astype(src)
    ctx, (name,) = runtime_ctx(x)
    out = ctx.emit1(Op.CAST, [name], CastAttrs(np.dtype(dst), bitcast=True))
    assert ctx.type_of(out) == TensorType(np.dtype(dst), (2, 3))
    np.testing.assert_array_equal(run(ctx, out, x), x.view(dst))


@pytest.mark.parametrize("src, dst", [(np.float32, np.int64), (np.int8, np.int16), (np.int64, object)])
def test_cast_bitcast_needs_equal_element_sizes(src, dst) -> None:
    ctx, (name,) = runtime_ctx(data(3).astype(src))
    with pytest.raises(WalleError, match="bitcast"):
        ctx.emit1(Op.CAST, [name], CastAttrs(np.dtype(dst), bitcast=True))


def test_cpu_x86_declines_bitcast_but_takes_cast() -> None:
    from walle_core.scheduler import schedule
    from walle_core.session import resolve_backends

    x = data(4)
    for bitcast, backend in ((True, "reference"), (False, "cpu_x86")):
        ctx, (name,) = runtime_ctx(x)
        ctx.builder.graph.outputs = [ctx.emit1(Op.CAST, [name], CastAttrs(np.dtype(np.int32), bitcast=bitcast))]
        segments = schedule(ctx.builder.graph, resolve_backends("cpu_x86", 1)).segments
        assert [s.backend.name for s in segments] == [backend]


def test_det_permutation_table() -> None:
    """Leibniz terms: every permutation once, with the sign of its inversion count."""
    index, signs = linalg._permutation_table(3)
    assert index.shape == (6, 3) and len({tuple(r) for r in index.tolist()}) == 6
    m = np.arange(9.0).reshape(3, 3) ** 2
    assert np.isclose((m.reshape(-1)[index].prod(axis=1) * signs).sum(), np.linalg.det(m))
