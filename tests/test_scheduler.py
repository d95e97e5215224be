"""Scheduling: per-op fallback, segment boundaries, and copies across memory domains."""

from __future__ import annotations

import numpy as np
import pytest

from walle_core import ops
from walle_core.backend import Backend, Executable, Segment
from walle_core.errors import WalleError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import BinaryFn, Op, UnaryFn
from walle_core.reference import ReferenceBackend, run_graph
from walle_core.reference.kernels import evaluate
from walle_core.scheduler import schedule
from walle_core.session import Plan


class DeviceArray:
    """A value 'on the device': the executor must never hand it to the host unconverted."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class FakeDeviceBackend(Backend):
    """Runs only UNARY ops, on values that live in its own memory domain."""

    name = "fake_device"
    memory_domain = "fake"
    priority = 50
    transfers = 0

    def supports(self, node, types) -> bool:
        return node.op is Op.UNARY

    def compile(self, segment: Segment) -> Executable:
        class Exe(Executable):
            def run(self, inputs):
                assert all(isinstance(v, DeviceArray) for v in inputs)
                env = dict(zip(segment.inputs, (v.array for v in inputs)))
                for node in segment.nodes:
                    env.update(zip(node.outputs, evaluate(node.op, node.attrs, [env[n] for n in node.inputs])))
                return [DeviceArray(env[n]) for n in segment.outputs]
        return Exe()

    def to_device(self, array):
        FakeDeviceBackend.transfers += 1
        return DeviceArray(np.array(array))

    def to_host(self, value):
        FakeDeviceBackend.transfers += 1
        return value.array


def _graph():
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (4, 5)))
    e = b.emit1(Op.UNARY, [x], ops.UnaryAttrs(UnaryFn.EXP))
    t = b.emit1(Op.UNARY, [e], ops.UnaryAttrs(UnaryFn.TANH))
    s = b.emit1(Op.BINARY, [t, x], ops.BinaryAttrs(BinaryFn.ADD))
    r = b.emit1(Op.UNARY, [s], ops.UnaryAttrs(UnaryFn.RELU))
    w = b.constant(np.ones((5, 3), np.float32))
    m = b.emit1(Op.MATMUL, [r, w], ops.MatMulAttrs())
    b.graph.outputs = [m, t]
    return b.graph


def test_fallback_segments_and_copies():
    g = _graph()
    backends = [FakeDeviceBackend(), ReferenceBackend()]
    sched = schedule(g, backends)
    assert sched.assignment == ["fake_device", "fake_device", "reference", "fake_device", "reference"]
    assert [s.backend.name for s in sched.segments] == ["fake_device", "reference", "fake_device", "reference"]
    first = sched.segments[0].segment
    assert first.inputs == ["x"] and len(first.outputs) == 1  # tanh output feeds ADD and is a graph output
    # x -> device, tanh -> host (kept for the graph output), add -> device, relu -> host
    assert sched.copies == 4
    plan = Plan(g, sched, [s.backend.compile(s.segment) for s in sched.segments])
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    FakeDeviceBackend.transfers = 0
    got = plan.execute({"x": x})
    want = run_graph(g, {"x": x})
    for a, b in zip(got, want):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert FakeDeviceBackend.transfers == 4  # x in, tanh out, add in, relu out (tanh reused)


def test_no_backend_supports_node_names_origin():
    g = _graph()
    g.nodes[2].origin, g.nodes[2].origin_op = "add_1", "Add"
    with pytest.raises(WalleError, match="binary.*Add node 'add_1'"):
        schedule(g, [FakeDeviceBackend()])
