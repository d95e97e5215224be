"""Fuzzing the ONNX importer: mutated models must load and run, or fail with a WalleError.

A few small valid models (a conv net, an MLP, a Reshape/Slice/Gather graph, an If/Loop graph)
are mutated at the byte level (truncation, byte flips, random insertions) and at the protobuf
level (wrong dims, dtypes and attribute values, cycles, huge dims, deleted initializers,
renamed inputs, swapped op types) and each result is loaded and run with ``backend="auto"``.

The loop runs in a subprocess limited by RLIMIT_AS and a timeout, so a segfault, an unbounded
allocation (MemoryError) or a hang fails the test instead of killing or stalling pytest.
Iteration ``i`` of seed ``s`` is reproducible on its own: its generator is seeded by ``(s, i)``.
Run this file as a script (``PYTHONPATH=. python tests/test_fuzz_import.py SEED SECONDS OUT_DIR``) to fuzz
longer.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

SEED = 20261123
BUDGET_SECONDS = 15.0
MAX_ITERATIONS = 50_000
ADDRESS_SPACE_LIMIT = 4 << 30
#: feeds larger than this are not built (the harness must not be what allocates without bound)
MAX_FEED_ELEMENTS = 1 << 22


# --- seed models ---------------------------------------------------------------------------

def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def conv_net() -> onnx.ModelProto:
    from walle_core.testing.models import example_cnn

    return example_cnn(seed=3, image_size=8, classes=4)


def mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [_init("w1", rng.standard_normal((6, 5)).astype(np.float32)),
             _init("b1", rng.standard_normal(5).astype(np.float32)),
             _init("w2", rng.standard_normal((5, 3)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", alpha=1.0, transB=0),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w2"], ["z"], name="fc2"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def movement() -> onnx.ModelProto:
    inits = [_init("shape", np.array([6, 4], np.int64)), _init("starts", np.array([1, 0], np.int64)),
             _init("ends", np.array([5, 3], np.int64)), _init("axes", np.array([0, 1], np.int64)),
             _init("idx", np.array([[0, 2], [3, 1]], np.int64))]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["s"], name="slice"),
             helper.make_node("Gather", ["s", "idx"], ["g"], name="gather", axis=0),
             helper.make_node("Transpose", ["g"], ["t"], name="transpose", perm=[2, 0, 1]),
             helper.make_node("Concat", ["t", "t"], ["y"], name="concat", axis=1)]
    graph = helper.make_graph(nodes, "movement", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def control_flow() -> onnx.ModelProto:
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["then_out"], name="then_add")], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [3])])
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"], name="else_neg")], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Mul", ["acc_in", "scale"], ["acc_out"], name="body_mul"),
         helper.make_node("Add", ["acc_out", "x"], ["scan_out"], name="body_add")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [3])])
    inits = [_init("trips", np.array(3, np.int64)), _init("scale", np.array([0.5, 2.0, -1.0], np.float32))]
    nodes = [helper.make_node("If", ["c"], ["branch"], name="if", then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Loop", ["trips", "c", "branch"], ["acc", "scans"], name="loop", body=body)]
    graph = helper.make_graph(
        nodes, "control",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("scans", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SEED_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_net": conv_net, "mlp": mlp, "movement": movement, "control_flow": control_flow,
}


# --- mutations ------------------------------------------------------------------------------

#: values that break naive arithmetic on sizes: zero, negative, just past int32, near int64
HOSTILE_INTS = [0, -1, -2, 1, 2, 3, 7, 1 << 20, (1 << 31) + 1, 1 << 40, (1 << 62) + 3, -(1 << 63)]
HOSTILE_FLOATS = [0.0, -1.0, 1e-30, 1e30, float("inf"), float("nan")]


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, subgraphs (If/Loop bodies) included."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(all_nodes(attr.g))
    return nodes


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [*model.graph.input, *model.graph.output]


def mutate_dim(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    infos = [vi for vi in _value_infos(model) if vi.type.tensor_type.shape.dim]
    if infos:
        dims = infos[rng.integers(len(infos))].type.tensor_type.shape.dim
        dims[rng.integers(len(dims))].dim_value = int(rng.choice(HOSTILE_INTS[:8]))


def mutate_dtype(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    targets = [vi.type.tensor_type for vi in _value_infos(model)] + list(model.graph.initializer)
    target = targets[rng.integers(len(targets))]
    if isinstance(target, TensorProto):
        target.data_type = int(rng.integers(0, 27))
    else:
        target.elem_type = int(rng.integers(0, 27))


def mutate_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = [n for n in all_nodes(model.graph) if n.attribute]
    if not nodes:
        return
    node = nodes[rng.integers(len(nodes))]
    attr = node.attribute[rng.integers(len(node.attribute))]
    choice = rng.integers(4)
    if choice == 0:
        node.attribute.remove(attr)
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = int(rng.choice(HOSTILE_INTS))
    elif attr.type == onnx.AttributeProto.INTS and attr.ints:
        attr.ints[rng.integers(len(attr.ints))] = int(rng.choice(HOSTILE_INTS))
        if choice == 2:
            attr.ints.append(int(rng.choice(HOSTILE_INTS)))
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(rng.choice(HOSTILE_FLOATS))
    else:  # change the attribute's kind under its name
        attr.type = int(rng.choice([onnx.AttributeProto.INT, onnx.AttributeProto.FLOATS,
                                    onnx.AttributeProto.STRING, onnx.AttributeProto.GRAPH]))


def make_cycle(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = list(model.graph.node)
    if len(nodes) >= 1:
        late = int(rng.integers(len(nodes)))
        early = int(rng.integers(late + 1))
        if nodes[early].input:
            nodes[early].input[rng.integers(len(nodes[early].input))] = nodes[late].output[0]


def huge_dims(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    inits = list(model.graph.initializer)
    if rng.integers(2) and inits:
        tensor = inits[rng.integers(len(inits))]
        if tensor.dims:
            tensor.dims[rng.integers(len(tensor.dims))] = int(rng.choice(HOSTILE_INTS[7:]))
        else:
            tensor.dims.append(int(rng.choice(HOSTILE_INTS[7:])))
        return
    int_inits = [t for t in inits if t.data_type == TensorProto.INT64 and t.dims]
    if int_inits:  # a shape / index / trip-count tensor with absurd values, payload kept consistent
        tensor = int_inits[rng.integers(len(int_inits))]
        values = numpy_helper.to_array(tensor).copy()
        values.flat[rng.integers(values.size)] = int(rng.choice(HOSTILE_INTS))
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


def delete_initializer(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    if model.graph.initializer:
        del model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]


def rename_input(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    graph = model.graph
    target = graph.input[rng.integers(len(graph.input))]
    target.name = str(rng.choice(["", "renamed", graph.output[0].name, graph.node[0].output[0]]))


def swap_op_type(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = all_nodes(model.graph)
    node = nodes[rng.integers(len(nodes))]
    node.op_type = str(rng.choice(["Conv", "Reshape", "Gather", "Loop", "If", "Split", "Resize", "TopK",
                                   "MaxPool", "Einsum", "NoSuchOp", ""]))


def drop_node_io(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = all_nodes(model.graph)
    node = nodes[rng.integers(len(nodes))]
    field = node.input if rng.integers(2) and node.input else node.output
    if field:
        del field[int(rng.integers(len(field)))]
    else:
        node.output.append("extra")


PROTO_MUTATIONS = [mutate_dim, mutate_dtype, mutate_attribute, make_cycle, huge_dims, delete_initializer,
                   rename_input, swap_op_type, drop_node_io]


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:int(rng.integers(len(data) + 1))]


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 9)) if buf else 0):
        buf[rng.integers(len(buf))] ^= int(rng.integers(1, 256))
    return bytes(buf)


def insert_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    at = int(rng.integers(len(data) + 1))
    return data[:at] + rng.bytes(int(rng.integers(1, 17))) + data[at:]


BYTE_MUTATIONS = [truncate, flip_bytes, insert_bytes]


def _parse_or_none(data: bytes) -> onnx.ModelProto | None:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        return None
    return model


def mutant(seeds: dict[str, bytes], seed: int, iteration: int) -> tuple[str, bytes]:
    """Iteration ``iteration``'s input: a seed model with one to three mutations."""
    rng = np.random.default_rng([seed, iteration])
    name = sorted(seeds)[iteration % len(seeds)]
    data = seeds[name]
    applied = []
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        if rng.random() < 0.3:  # most byte edits only exercise the protobuf parser
            mutation = BYTE_MUTATIONS[rng.integers(len(BYTE_MUTATIONS))]
            data = mutation(data, rng)
        else:
            mutation = PROTO_MUTATIONS[rng.integers(len(PROTO_MUTATIONS))]
            model = _parse_or_none(data)
            if model is None:  # an earlier byte mutation broke the protobuf: keep the bytes
                continue
            try:
                mutation(model, rng)
            except (IndexError, ValueError, TypeError):  # the model is too broken for this edit
                continue
            data = model.SerializeToString()
        applied.append(mutation.__name__)
    return f"{name}:{'+'.join(applied)}", data


# --- running one input ----------------------------------------------------------------------

def _feeds(session, rng: np.random.Generator) -> dict | None:
    from walle_core.cli.model_inputs import concrete_shape, random_array

    feeds = {}
    for spec in session.inputs:
        if spec.kind != "tensor":
            feeds[spec.name] = [] if spec.kind == "sequence" else None
            continue
        shape = concrete_shape(spec)
        if np.prod(shape, dtype=np.float64) > MAX_FEED_ELEMENTS:
            return None
        if spec.dtype == object:
            feeds[spec.name] = np.full(shape, "a", dtype=object)
        else:
            feeds[spec.name] = random_array(spec, rng)
    return feeds


def try_one(data: bytes, rng: np.random.Generator) -> str:
    """Load and run ``data``: "ran", "loaded" (feeds too big to build) or the WalleError's
    class name. Any other exception propagates: that is the bug the fuzzer is looking for."""
    import walle_core as wc

    try:
        session = wc.load(data, backend="auto")
        feeds = _feeds(session, rng)
        if feeds is None:
            return "loaded"
        session.run(feeds)
        return "ran"
    except wc.WalleError as exc:
        return type(exc).__name__


def fuzz(seed: int, budget_seconds: float, max_iterations: int, out_dir: Path) -> dict:
    """The fuzz loop (run inside the limited subprocess). The current input is written to
    ``out_dir/current.onnx`` before it is tried, so a crash leaves it behind."""
    import faulthandler
    import time
    import traceback

    faulthandler.enable()
    seeds = {name: build().SerializeToString() for name, build in SEED_MODELS.items()}
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + budget_seconds
    iteration = 0
    while iteration < max_iterations and time.monotonic() < deadline:
        label, data = mutant(seeds, seed, iteration)
        (out_dir / "current.onnx").write_bytes(data)
        (out_dir / "current.txt").write_text(f"seed {seed} iteration {iteration} {label}\n")
        try:
            outcomes[try_one(data, np.random.default_rng([seed, iteration, 1]))] += 1
        except BaseException as exc:  # noqa: BLE001 -- anything but a WalleError is a finding
            saved = out_dir / f"failure-{seed}-{iteration}.onnx"
            saved.write_bytes(data)
            return {"failure": f"seed {seed} iteration {iteration} ({label}): {type(exc).__name__}: {exc}",
                    "saved": str(saved), "traceback": traceback.format_exc(), "tried": iteration + 1,
                    "outcomes": dict(outcomes)}
        iteration += 1
    return {"tried": iteration, "outcomes": dict(outcomes)}


# --- the test -------------------------------------------------------------------------------

def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def test_invalid_utf8_in_a_name_is_a_model_error():
    """Found by this fuzzer: the protobuf parser hands back bytes for such a field."""
    import walle_core as wc

    data = mlp().SerializeToString()
    assert data.count(b"Relu") == 1
    with pytest.raises(wc.ModelError, match="op_type.*UTF-8"):
        wc.load(data.replace(b"Relu", b"R\xfflu"))


def test_mutated_models_load_run_or_fail_cleanly(tmp_path):
    import walle_core

    command = [sys.executable, __file__, str(SEED), str(BUDGET_SECONDS), str(tmp_path)]
    root = str(Path(walle_core.__file__).resolve().parents[1])  # the worker imports the same walle_core
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=BUDGET_SECONDS + 180,
                          preexec_fn=_limit_address_space, env=env)
    where = (tmp_path / "current.txt").read_text() if (tmp_path / "current.txt").exists() else "?"
    assert proc.returncode >= 0, (f"fuzz worker killed by signal {-proc.returncode} at {where.strip()} "
                                  f"(input saved at {tmp_path / 'current.onnx'})\n{proc.stderr[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nfuzzed {report['tried']} inputs (seed {SEED}, {BUDGET_SECONDS:.0f} s budget): "
          f"{json.dumps(report['outcomes'], sort_keys=True)}")
    assert "failure" not in report, f"{report['failure']}\nsaved: {report['saved']}\n{report['traceback']}"
    assert report["tried"] >= 100, "the fuzz loop made too little progress to mean anything"
    assert report["outcomes"].get("ran", 0) > 0, "no mutant ever ran: the mutations are too destructive"


if __name__ == "__main__":
    result = fuzz(int(sys.argv[1]), float(sys.argv[2]), MAX_ITERATIONS, Path(sys.argv[3]))
    print(json.dumps(result))
