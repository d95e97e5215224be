"""The arena planner: live tensors never share bytes, dead ones do."""

import numpy as np

from walle_core import ops
from walle_core.backend import Segment
from walle_core.ir import GraphBuilder, TensorType
from walle_core.memory import ALIGNMENT, plan_segment_memory
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
