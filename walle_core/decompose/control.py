"""Control flow, resolved while lowering: If with a known condition is inlined, Loop and Scan
are unrolled. Shapes are static in the IR, so a body that runs a data-dependent number of
times (or takes a data-dependent branch) has no lowering; the error says which value was
needed. Conditions and trip counts fed as graph inputs are value-specialised.
"""

from __future__ import annotations

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule

#: unrolling stops here: beyond it a Loop is almost certainly data-dependent or a hang
MAX_ITERATIONS = 1024


def _scalar(ctx: LoweringContext, name: str, what: str) -> np.ndarray:
    value = ctx.required_value(name, what)
    if value.size != 1:
        raise ctx.invalid(f"{what} must hold one value, got shape {value.shape}")
    return value.reshape(-1)[0]


def _graph(ctx: LoweringContext, node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    graph = ctx.attr(node, name)
    if not isinstance(graph, onnx.GraphProto):
        raise ctx.invalid(f"attribute {name!r} (a graph) is missing")
    return graph


def _if(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    cond = bool(_scalar(ctx, ctx.required_input(node, 0), "the condition"))
    body = _graph(ctx, node, "then_branch" if cond else "else_branch")
    outs = ctx.lower_subgraph(body, {})
    if len(outs) != len(node.output):
        raise ctx.invalid(f"the branch has {len(outs)} outputs, the node {len(node.output)}")
    return outs


def _stack(ctx: LoweringContext, items: list[str], axis: int = 0) -> str:
    return raster.concat(ctx, [raster.unsqueeze(ctx, x, [axis]) for x in items], axis)


def _loop(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    body = _graph(ctx, node, "body")
    trip, cond = ctx.input(node, 0), ctx.input(node, 1)
    carried = [ctx.value(node, i) for i in range(2, len(node.input))]
    if any(v is None for v in carried):
        raise ctx.invalid("a loop-carried input is missing")
    limit = int(_scalar(ctx, trip, "the trip count M")) if trip else None
    running = bool(_scalar(ctx, cond, "the loop condition")) if cond else True
    n_carried = len(carried)
    if len(body.input) != n_carried + 2 or len(body.output) < n_carried + 1:
        raise ctx.invalid("the body's inputs/outputs do not match the loop-carried values")
    scans: list[list[str]] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    i = 0
    while running and (limit is None or i < limit):
        if i >= MAX_ITERATIONS:
            raise ctx.unsupported(f"the loop runs more than {MAX_ITERATIONS} iterations")
        bindings = {body.input[0].name: ctx.constant(np.array(i, dtype=np.int64)),
                    body.input[1].name: ctx.constant(np.array(running))}
        bindings.update({formal.name: value for formal, value in zip(body.input[2:], carried)})
        outs = ctx.lower_subgraph(body, bindings)
        running = bool(_scalar(ctx, outs[0], "the loop condition")) if cond or limit is None else True
        carried = outs[1:1 + n_carried]
        for acc, value in zip(scans, outs[1 + n_carried:]):
            acc.append(value)
        i += 1
    results = list(carried)
    for acc in scans:
        if not acc:
            raise ctx.unsupported("a scan output of a loop that runs zero times (its shape is unknown)")
        results.append(_stack(ctx, acc))
    return results


def _scan(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    body = _graph(ctx, node, "body")
    n_scan = ctx.attr(node, "num_scan_inputs")
    if n_scan is None:
        raise ctx.invalid("attribute 'num_scan_inputs' is missing")
    if ctx.opset < 9:
        return _scan8(ctx, node, body, n_scan)
    inputs = [ctx.required_input(node, i) for i in range(len(node.input))]
    n_state = len(inputs) - n_scan
    if n_state < 0 or len(body.input) != len(inputs):
        raise ctx.invalid("the body's inputs do not match the node's")
    n_out = len(body.output) - n_state
    return _unroll(ctx, body, inputs[:n_state], inputs[n_state:],
                   ctx.ints_attr(node, "scan_input_axes", [0] * n_scan),
                   ctx.ints_attr(node, "scan_input_directions", [0] * n_scan),
                   ctx.ints_attr(node, "scan_output_axes", [0] * n_out),
                   ctx.ints_attr(node, "scan_output_directions", [0] * n_out))


def _scan8(ctx: LoweringContext, node: onnx.NodeProto, body: onnx.GraphProto, n_scan: int) -> list[str]:
    """Scan-8: every input has a leading batch axis (scan inputs are [batch, steps, ...]); each
    batch element is scanned on its own and the results are stacked back along the batch."""
    inputs = [ctx.required_input(node, i) for i in range(1, len(node.input))]
    n_state = len(inputs) - n_scan
    if n_state < 0 or len(body.input) != len(inputs) or any(ctx.rank(x) < 2 for x in inputs[n_state:]):
        raise ctx.invalid("the body's inputs do not match the node's")
    if ctx.input(node, 0):  # only full-length sequences: a shorter one would need masking per step
        lens = ctx.required_value(ctx.input(node, 0), "input 0 (sequence_lens)")
        steps = {ctx.shape(x)[1] for x in inputs[n_state:]}
        if lens.size and (len(steps) != 1 or (lens != next(iter(steps))).any()):
            raise ctx.unsupported(f"sequence_lens {lens.tolist()} shorter than the scan inputs")
    batches = {ctx.shape(x)[0] for x in inputs}
    if len(batches) != 1:
        raise ctx.invalid(f"inputs have different batch sizes {sorted(batches)}")
    directions = ctx.ints_attr(node, "directions", [0] * n_scan)
    n_out = len(body.output) - n_state
    per_batch = []
    for b in range(batches.pop()):
        row = [raster.squeeze(ctx, raster.slice_axes(ctx, x, [b], [b + 1], [0]), [0]) for x in inputs]
        per_batch.append(_unroll(ctx, body, row[:n_state], row[n_state:], [0] * n_scan, directions,
                                 [0] * n_out, [0] * n_out))
    return [_stack(ctx, list(outs)) if all(outs) else "" for outs in zip(*per_batch)]


def _unroll(ctx: LoweringContext, body: onnx.GraphProto, states: list[str], seqs: list[str],
            in_axes: list[int], in_dirs: list[int], out_axes: list[int], out_dirs: list[int]) -> list[str]:
    """Run ``body`` once per step along the scan inputs' axes: final states, then scan outputs."""
    n_state, n_out = len(states), len(body.output) - len(states)
    in_axes = [ctx.axis(a, ctx.rank(x)) for a, x in zip(in_axes, seqs)]
    lengths = {ctx.shape(x)[a] for x, a in zip(seqs, in_axes)}
    if len(lengths) != 1:
        raise ctx.invalid(f"scan inputs have different sequence lengths {sorted(lengths)}")
    steps = lengths.pop()
    if steps > MAX_ITERATIONS:
        raise ctx.unsupported(f"a scan of {steps} steps is too long to unroll")
    collected: list[list[str]] = [[] for _ in range(n_out)]
    for t in range(steps):
        bindings = {formal.name: value for formal, value in zip(body.input, states)}
        for formal, x, axis, direction in zip(body.input[n_state:], seqs, in_axes, in_dirs):
            at = steps - 1 - t if direction else t
            bindings[formal.name] = raster.squeeze(ctx, raster.slice_axes(ctx, x, [at], [at + 1], [axis]), [axis])
        outs = ctx.lower_subgraph(body, bindings)
        states = outs[:n_state]
        for acc, value in zip(collected, outs[n_state:]):
            acc.append(value)
    results = list(states)
    for acc, axis, direction in zip(collected, out_axes, out_dirs):
        if direction:
            acc = acc[::-1]
        rank = ctx.rank(acc[0]) + 1 if acc else 1
        results.append(_stack(ctx, acc, ctx.axis(axis, rank)) if acc else "")
    return results


RULES: dict[str, Rule] = {"If": _if, "Loop": _loop, "Scan": _scan}
