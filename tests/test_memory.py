"""The arena planner: live tensors never share bytes, dead ones do, and concatenation inputs
are placed inside their concatenation."""

import numpy as np

from walle_core import ops
from walle_core.backend import Segment
from walle_core.ir import GraphBuilder, TensorType
from walle_core.memory import ALIGNMENT, in_place_raster_inputs, plan_segment_memory
from walle_core.ops import Op, UnaryFn


def _chain(n: int, shape=(64, 64)) -> Segment:
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), shape))
    names = [x]
    for _ in range(n):
        names.append(b.emit1(Op.UNARY, [names[-1]], ops.UnaryAttrs(UnaryFn.RELU)))
    g = b.graph
    return Segment(g.nodes, ["x"], [names[-1]], g.types)


def _lifetimes(seg: Segment) -> dict[str, tuple[int, int]]:
    life: dict[str, list[int]] = {}
    for step, node in enumerate(seg.nodes):
        for name in node.outputs:
            life.setdefault(name, [step, step])
        for name in node.inputs:
            if name in life:
                life[name][1] = step
    return {k: (v[0], v[1]) for k, v in life.items()}


def test_chain_reuses_two_buffers():
    seg = _chain(10)
    plan = plan_segment_memory(seg)
    tensor_bytes = 64 * 64 * 4
    assert len(plan.offsets) == 9  # the final output is not in the arena
    assert plan.arena_bytes == 2 * tensor_bytes
    assert plan.naive_bytes == 9 * tensor_bytes


def test_scratch_keeps_a_gap_only_while_its_node_runs():
    """A node's reserved scratch is a nameless tensor alive for that one step: the arena grows
    by it where nothing dead is large enough (a chain's two buffers are both live at every step),
    and a reservation for a later step shares bytes with tensors dead by then."""
    tensor_bytes = 64 * 64 * 4
    seg = _chain(10)
    assert plan_segment_memory(seg, scratch={3: 1000}).arena_bytes == 2 * tensor_bytes + 1024
    assert plan_segment_memory(seg, scratch={3: 0}).arena_bytes == 2 * tensor_bytes
    plan = plan_segment_memory(seg, scratch={3: 1000, 7: 3 * tensor_bytes})
    assert plan.arena_bytes == 3 * tensor_bytes + 2 * tensor_bytes  # the big one is placed first
    assert len(plan.offsets) == 9  # reservations get no names
    # the chain's tensors stay clear of each reservation while its node runs
    life = _lifetimes(seg)
    big_at = plan.arena_bytes - 2 * tensor_bytes  # where the chain went, after the big reservation
    for name, at in plan.offsets.items():
        first, last = life[name]
        if first <= 7 <= last:
            assert at >= big_at, name


def test_live_tensors_never_overlap():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (8, 8)))
    pool = [x]
    for i in range(40):
        a, c = rng.choice(pool, 2)
        out = b.emit1(Op.BINARY, [a, c], ops.BinaryAttrs(ops.BinaryFn.ADD))
        if i % 3 == 0:
            out = b.emit1(Op.REDUCE, [out], ops.ReduceAttrs(ops.ReduceFn.SUM, (1,), True))
            out = b.emit1(Op.BINARY, [out, x], ops.BinaryAttrs(ops.BinaryFn.MUL))
        pool.append(out)
    g = b.graph
    seg = Segment(g.nodes, ["x"], [pool[-1]], g.types)
    plan = plan_segment_memory(seg)
    life = _lifetimes(seg)
    items = list(plan.offsets.items())
    for i, (na, oa) in enumerate(items):
        assert oa % ALIGNMENT == 0
        for nb, ob in items[i + 1:]:
            la, lb = life[na], life[nb]
            if la[1] < lb[0] or lb[1] < la[0]:
                continue
            ea, eb = oa + g.types[na].nbytes, ob + g.types[nb].nbytes
            assert ea <= ob or eb <= oa, f"{na} and {nb} overlap while both live"
    assert plan.arena_bytes < plan.naive_bytes


F32 = np.dtype(np.float32)


def _concat(b: GraphBuilder, xs: list[str], shapes: list[tuple[int, ...]]) -> str:
    """A RASTER concatenating ``xs`` (N = 1) along axis 1, the way Concat decomposes."""
    regions, at = [], 0
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape))
        regions.append(ops.Region(i, (n,), 0, (1,), at, (1,)))
        at += n
    out_shape = (1, sum(s[1] for s in shapes), *shapes[0][2:])
    return b.emit1(Op.RASTER, xs, ops.RasterAttrs(out_shape, tuple(regions)))


def _relu(b: GraphBuilder, x: str) -> str:
    return b.emit1(Op.UNARY, [x], ops.UnaryAttrs(UnaryFn.RELU))


def test_concatenation_inputs_are_found_and_placed_inside_it():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(F32, (1, 16, 4, 4)))
    a, c = _relu(b, x), _relu(b, x)
    cat = _concat(b, [a, c, x], [(1, 16, 4, 4)] * 3)  # x, a segment input, is copied
    y = _relu(b, cat)
    g = b.graph
    seg = Segment(g.nodes, ["x"], [y], g.types)
    aliases = in_place_raster_inputs(seg)
    assert aliases == {a: (cat, 0), c: (cat, 16 * 16 * 4)}
    plan = plan_segment_memory(seg, aliases=aliases)
    assert plan.parts == {a: cat, c: cat}
    assert plan.offsets[a] == plan.offsets[cat] and plan.offsets[c] == plan.offsets[cat] + 1024
    # the concatenation's bytes are live from a's producer on: nothing else may use them then
    assert plan.arena_bytes == g.types[cat].nbytes
    assert plan_segment_memory(seg).parts == {}


def test_what_is_not_written_in_place():
    def found(build) -> dict:
        b = GraphBuilder()
        x = b.add_input("x", TensorType(F32, (1, 8, 3, 3)))
        outputs = build(b, x)
        g = b.graph
        return in_place_raster_inputs(Segment(g.nodes, ["x"], outputs, g.types))

    def concat_read_twice(b, x):
        a, c = _relu(b, x), _relu(b, x)
        return [_relu(b, _concat(b, [a, c], [(1, 8, 3, 3)] * 2)), _relu(b, c)]

    def concat_as_output(b, x):
        return [_concat(b, [_relu(b, x), _relu(b, x)], [(1, 8, 3, 3)] * 2)]

    def unaligned_second_part(b, x):  # the second part starts 36 bytes in
        a = _relu(b, x)
        one = b.emit1(Op.RASTER, [a], ops.RasterAttrs((1, 1, 3, 3), (ops.Region(0, (9,), 0, (1,), 0, (1,)),)))
        return [_relu(b, _concat(b, [one, _relu(b, x)], [(1, 1, 3, 3), (1, 8, 3, 3)]))]

    def not_tiling(b, x):  # half of the output is left to the fill
        t = b.emit1(Op.RASTER, [_relu(b, x)], ops.RasterAttrs((144,), (ops.Region(0, (72,), 0, (1,), 72, (1,)),)))
        return [_relu(b, t)]

    def strided(b, x):  # a transpose, not a whole copy in order
        region = ops.Region(0, (8, 9), 0, (9, 1), 0, (1, 8))
        return [_relu(b, b.emit1(Op.RASTER, [_relu(b, x)], ops.RasterAttrs((9, 8), (region,))))]

    assert len(found(concat_read_twice)) == 1  # the part read once only
    assert found(concat_as_output) == {}
    assert [offset for _, offset in found(unaligned_second_part).values()] == [0]
    assert found(not_tiling) == {}
    assert found(strided) == {}


def test_nested_concatenations_resolve_to_the_outer_one():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(F32, (1, 16, 2, 2)))
    a, c, d = _relu(b, x), _relu(b, x), _relu(b, x)
    inner = _concat(b, [a, c], [(1, 16, 2, 2)] * 2)
    outer = _concat(b, [d, inner], [(1, 16, 2, 2), (1, 32, 2, 2)])
    y = _relu(b, outer)
    g = b.graph
    seg = Segment(g.nodes, ["x"], [y], g.types)
    plan = plan_segment_memory(seg, aliases=in_place_raster_inputs(seg))
    base = plan.offsets[outer]
    assert [plan.offsets[n] - base for n in (d, inner, a, c)] == [0, 256, 256, 512]
