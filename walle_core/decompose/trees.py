"""TreeEnsemble (ai.onnx.ml) as comparisons, one GATHER of path conditions and a MATMUL.

Tree structure is in the attributes, so every root-to-leaf path is known while lowering.
All decision nodes are evaluated at once (a [N, D] table of 0/1), a leaf is reached where
the product of its path's conditions (or their complements) is 1, and the per-target sum
over reached leaves is a MATMUL with a constant [leaves, targets] weight table. Only the
linear aggregations (SUM, AVERAGE) decompose this way; MIN/MAX and post transforms say so.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast
from walle_core.decompose.reduce import reduce
from walle_core.ops import BinaryFn, GatherAttrs, MatMulAttrs, Op, ReduceFn

#: ONNX TreeEnsemble node modes, in attribute order
_MODES = (BinaryFn.LE, BinaryFn.LT, BinaryFn.GE, BinaryFn.GT, BinaryFn.EQ, BinaryFn.NE)
_MEMBER = 6
#: leaves x path length beyond which the path table is surely a malformed model
MAX_PATH_ENTRIES = 1 << 22


def _array(ctx: LoweringContext, node: onnx.NodeProto, name: str) -> np.ndarray | None:
    value = ctx.attr(node, name)
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value).reshape(-1)
    return np.asarray(value).reshape(-1)


def _paths(ctx: LoweringContext, node: onnx.NodeProto, n_nodes: int) -> list[tuple[list[tuple[int, bool]], int]]:
    """(path as [(decision node, took the true branch)], leaf index) for every leaf of every tree."""
    true_ids, false_ids = _array(ctx, node, "nodes_truenodeids"), _array(ctx, node, "nodes_falsenodeids")
    true_leaf, false_leaf = _array(ctx, node, "nodes_trueleafs"), _array(ctx, node, "nodes_falseleafs")
    roots = _array(ctx, node, "tree_roots")
    if any(a is None or len(a) != n_nodes for a in (true_ids, false_ids, true_leaf, false_leaf)) or roots is None:
        raise ctx.invalid("nodes_* attributes must all have one entry per node, and tree_roots is required")
    found = []
    for root in roots.tolist():
        if not 0 <= root < n_nodes:
            raise ctx.invalid(f"tree root {root} is out of range")
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            # a single-leaf tree: the reference evaluator takes the root's own index as the leaf
            found.append(([], root))
            continue
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
        while stack:
            at, path = stack.pop()
            if len(path) > n_nodes:
                raise ctx.invalid("the trees contain a cycle")
            for branch, ids, leafs in ((True, true_ids, true_leaf), (False, false_ids, false_leaf)):
                target, step = int(ids[at]), [*path, (at, branch)]
                if leafs[at]:
                    found.append((step, target))
                elif not 0 <= target < n_nodes:
                    raise ctx.invalid(f"node {at} branches to node {target}, which does not exist")
                else:
                    stack.append((target, step))
    return found


def _conditions(ctx: LoweringContext, node: onnx.NodeProto, x: str, n_nodes: int) -> str:
    """[N, n_nodes] float64 table: 1 where a sample takes a node's true branch."""
    features = _array(ctx, node, "nodes_featureids")
    modes, splits = _array(ctx, node, "nodes_modes"), _array(ctx, node, "nodes_splits")
    if features is None or modes is None or splits is None or not (len(features) == len(modes) == len(splits)
                                                                    == n_nodes):
        raise ctx.invalid("nodes_featureids, nodes_modes and nodes_splits need one entry per node")
    if (features < 0).any() or (features >= ctx.shape(x)[1]).any():
        raise ctx.invalid(f"feature ids {features.tolist()} are out of range for {ctx.shape(x)[1]} features")
    missing_true = _array(ctx, node, "nodes_missing_value_tracks_true")
    members = list(_array(ctx, node, "membership_values") if (modes == _MEMBER).any() else [])
    columns = ctx.emit1(Op.GATHER, [x, ctx.constant(features.astype(np.int64))], GatherAttrs(1))
    parts = []
    for i, mode in enumerate(modes.tolist()):
        column = raster.slice_axes(ctx, columns, [i], [i + 1], [1])
        if mode == _MEMBER:
            end = next((k for k, v in enumerate(members) if np.isnan(v)), len(members))
            values, members = np.array(members[:end], dtype=np.float64), members[end + 1:]
            if values.size:
                hits = binary(ctx, BinaryFn.EQ, column, ctx.constant(values.reshape(1, -1)))
                any_hit = reduce(ctx, cast(ctx, hits, np.dtype(np.float64)), ReduceFn.MAX, (1,), keepdims=True)
                taken = cast(ctx, any_hit, np.dtype(bool))
            else:  # an empty set matches nothing
                taken = ctx.constant(np.zeros((ctx.shape(x)[0], 1), dtype=bool))
        elif 0 <= mode < len(_MODES):
            taken = binary(ctx, _MODES[mode], column, ctx.constant(np.array(float(splits[i]))))
        else:
            raise ctx.invalid(f"node {i} has unknown mode {mode}")
        if missing_true is not None and i < len(missing_true) and missing_true[i]:
            taken = binary(ctx, BinaryFn.OR, taken, binary(ctx, BinaryFn.NE, column, column))
        parts.append(cast(ctx, taken, np.dtype(np.float64)))
    return raster.concat(ctx, parts, 1)


def _tree_ensemble(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) != 2 or ctx.dtype(x).kind != "f":
        raise ctx.invalid(f"X must be a floating-point [N, F] matrix, got {ctx.dtype(x)}{list(ctx.shape(x))}")
    aggregate = int(ctx.attr(node, "aggregate_function", 1))
    if aggregate not in (0, 1):
        raise ctx.unsupported("MIN/MAX aggregation (only SUM and AVERAGE are linear in the leaves)")
    if int(ctx.attr(node, "post_transform", 0)) != 0:
        raise ctx.unsupported("post_transform other than NONE")
    weights, targets = _array(ctx, node, "leaf_weights"), _array(ctx, node, "leaf_targetids")
    n_targets = int(ctx.attr(node, "n_targets", 0))
    modes = _array(ctx, node, "nodes_modes")
    if weights is None or targets is None or len(weights) != len(targets) or modes is None:
        raise ctx.invalid("leaf_weights, leaf_targetids and nodes_modes are required (one weight per target id)")
    if (targets < 0).any() or (targets >= n_targets).any():
        raise ctx.invalid(f"leaf target ids {targets.tolist()} are out of range for n_targets={n_targets}")
    n_nodes = len(modes)
    paths = _paths(ctx, node, n_nodes)
    depth = max((len(p) for p, _ in paths), default=0) or 1
    if len(paths) * depth > MAX_PATH_ENTRIES:
        raise ctx.unsupported(f"{len(paths)} leaves of depth up to {depth} are too many to expand")
    n_trees = len(_array(ctx, node, "tree_roots"))
    table = np.zeros((len(paths), n_targets))
    # columns of [conditions, 1 - conditions, 1]: a path step picks one, padding picks the 1
    picks = np.full((len(paths), depth), 2 * n_nodes, dtype=np.int64)
    for row, (path, leaf) in enumerate(paths):
        if not 0 <= leaf < len(weights):
            raise ctx.invalid(f"leaf index {leaf} is out of range for {len(weights)} leaves")
        table[row, targets[leaf]] += weights[leaf] / (n_trees if aggregate == 0 else 1)
        for step, (at, branch) in enumerate(path):
            picks[row, step] = at if branch else n_nodes + at
    wide = cast(ctx, x, np.dtype(np.float64))
    taken = _conditions(ctx, node, wide, n_nodes)
    ones = ctx.constant(np.ones((ctx.shape(x)[0], 1)))
    choices = raster.concat(ctx, [taken, binary(ctx, BinaryFn.SUB, ctx.constant(np.array(1.0)), taken), ones], 1)
    steps = ctx.emit1(Op.GATHER, [choices, ctx.constant(picks)], GatherAttrs(1))  # [N, leaves, depth]
    reached = reduce(ctx, steps, ReduceFn.PROD, (2,), keepdims=False)
    scores = ctx.emit1(Op.MATMUL, [reached, ctx.constant(table)], MatMulAttrs())
    return [cast(ctx, scores, ctx.dtype(x))]


RULES: dict[str, Rule] = {"TreeEnsemble": _tree_ensemble}
