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
    carried = [ctx.required_input(node, i) for i in range(2, len(node.input))]
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
    if ctx.opset < 9:
        raise ctx.unsupported("Scan-8 (batched, with sequence_lens) is not supported")
    body = _graph(ctx, node, "body")
    n_scan = ctx.attr(node, "num_scan_inputs")
    if n_scan is None:
        raise ctx.invalid("attribute 'num_scan_inputs' is missing")
    inputs = [ctx.required_input(node, i) for i in range(len(node.input))]
    n_state = len(inputs) - n_scan
    if n_state < 0 or len(body.input) != len(inputs):
        raise ctx.invalid("the body's inputs do not match the node's")
    states, seqs = inputs[:n_state], inputs[n_state:]
    in_axes = ctx.ints_attr(node, "scan_input_axes", [0] * n_scan)
    in_dirs = ctx.ints_attr(node, "scan_input_directions", [0] * n_scan)
    n_out = len(body.output) - n_state
    out_axes = ctx.ints_attr(node, "scan_output_axes", [0] * n_out)
    out_dirs = ctx.ints_attr(node, "scan_output_directions", [0] * n_out)
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
