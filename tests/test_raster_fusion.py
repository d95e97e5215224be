"""Raster-chain fusion: random chains of movement ops collapse and stay exact."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from walle_core import plugins
from walle_core.ir import TensorType
from walle_core.onnx import load_model, lower
from walle_core.ops import Op, Region
from walle_core.optimize import eliminate_dead_code
from walle_core.raster_fusion import compose, fuse_raster_chains
from walle_core.reference import run_graph


def _random_chain(rng: np.random.Generator, steps: int) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(2, 5))))
    cur, cur_shape, nodes, inits = "x", list(shape), [], []
    for i in range(steps):
        kind = rng.choice(["transpose", "reshape", "slice", "expand"])
        out = f"t{i}"
        if kind == "transpose":
            perm = [int(p) for p in rng.permutation(len(cur_shape))]
            nodes.append(helper.make_node("Transpose", [cur], [out], perm=perm))
            cur_shape = [cur_shape[p] for p in perm]
        elif kind == "reshape":
            total = int(np.prod(cur_shape))
            dims = [d for d in range(1, total + 1) if total % d == 0]
            first = int(rng.choice(dims))
            new = [first, total // first]
            inits.append(numpy_helper.from_array(np.array(new, np.int64), f"s{i}"))
            nodes.append(helper.make_node("Reshape", [cur, f"s{i}"], [out]))
            cur_shape = new
        elif kind == "slice":
            axis = int(rng.integers(len(cur_shape)))
            n = cur_shape[axis]
            start = int(rng.integers(0, n))
            step = int(rng.choice([1, 2, -1]))
            end = n if step > 0 else -n - 1
            if step < 0:
                start = n - 1 - start
            for name, val in (("st", start), ("en", end), ("ax", axis), ("sp", step)):
                inits.append(numpy_helper.from_array(np.array([val], np.int64), f"{name}{i}"))
            nodes.append(helper.make_node("Slice", [cur, f"st{i}", f"en{i}", f"ax{i}", f"sp{i}"], [out]))
            cur_shape[axis] = len(range(start, end, step)) if step > 0 else len(range(start, -1, step))
        else:
            axis = int(rng.integers(len(cur_shape)))
            if cur_shape[axis] != 1:
                continue
            new = list(cur_shape)
            new[axis] = 3
            inits.append(numpy_helper.from_array(np.array(new, np.int64), f"e{i}"))
            nodes.append(helper.make_node("Expand", [cur, f"e{i}"], [out]))
            cur_shape = new
        cur = out
    nodes.append(helper.make_node("Neg", [cur], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), shape


def _fused_counts(seed: int) -> tuple[int, int]:
    """(rasters before, rasters after) for random chain ``seed``, checking exactness."""
    rng = np.random.default_rng(seed)
    model, shape = _random_chain(rng, steps=int(rng.integers(2, 6)))
    graph = lower(load_model(model), {"x": TensorType(np.dtype(np.float32), shape)}, plugins.decomposition_rules())
    x = rng.standard_normal(shape).astype(np.float32)
    want = run_graph(copy.deepcopy(graph), {"x": x})[0]
    before = sum(n.op is Op.RASTER for n in graph.nodes)
    eliminate_dead_code(fuse_raster_chains(graph))
    after = sum(n.op is Op.RASTER for n in graph.nodes)
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], want)
    return before, after


@pytest.mark.parametrize("seed", range(60))
def test_random_movement_chains_fuse_exactly(seed):
    before, after = _fused_counts(seed)
    assert after <= before


def test_most_chains_collapse_to_one_copy():
    counts = [_fused_counts(seed) for seed in range(60)]
    collapsed = sum(after <= 1 for before, after in counts if before > 1)
    chains = sum(before > 1 for before, _ in counts)
    assert chains >= 30 and collapsed >= 0.8 * chains, (collapsed, chains)


def test_transpose_then_reshape_composes_by_splitting_a_dimension():
    # producer: transpose of a [2, 3] source into [3, 2]; consumer: reads it flat (reshape to [6])
    producer = Region(0, (3, 2), 0, (1, 3), 0, (2, 1))
    consumer = Region(0, (6,), 0, (1,), 0, (1,))
    fused = compose(consumer, producer, 0)
    assert fused is not None
    src = np.arange(6.0)
    want = src.reshape(2, 3).T.reshape(-1)
    got = [src[fused.src_offset + i * fused.src_strides[0] + j * fused.src_strides[1]]
           for i in range(fused.size[0]) for j in range(fused.size[1])]
    assert fused.size == (3, 2) and got == list(want)


def test_carry_between_digits_is_not_composed():
    producer = Region(0, (3, 4), 0, (1, 3), 0, (4, 1))  # a transpose
    consumer = Region(0, (3,), 2, (1,), 0, (1,))  # flat elements 2, 3, 4: crosses a row boundary
    assert compose(consumer, producer, 0) is None


def test_consumer_without_regions_keeps_its_input():
    from walle_core.ir import GraphBuilder
    from walle_core.ops import RasterAttrs

    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (2, 3)))
    t = b.emit1(Op.RASTER, [x], RasterAttrs((3, 2), (Region(0, (3, 2), 0, (1, 3), 0, (2, 1)),)))
    empty = b.emit1(Op.RASTER, [t], RasterAttrs((0,), ()))
    b.graph.outputs = [empty]
    fuse_raster_chains(b.graph)
    assert b.graph.nodes[1].inputs == [t]  # a raster needs at least one input
