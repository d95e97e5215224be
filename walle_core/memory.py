"""Liveness-based arena planning: every intermediate tensor of a segment gets an offset in
one buffer, and tensors whose lifetimes do not overlap share bytes. Backends call this at
compile time, so ``run`` performs no allocation for intermediates."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from walle_core.backend import Segment
from walle_core.ops import Op

ALIGNMENT = 64  # one cache line, and the widest vector register (AVX-512)


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]  # tensor name -> byte offset in the arena
    arena_bytes: int
    naive_bytes: int  # what one buffer per tensor would need, for reporting
    parts: dict[str, str] = field(default_factory=dict)  # tensors placed inside another: name -> that one


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def in_place_raster_inputs(segment: Segment) -> dict[str, tuple[str, int]]:
    """Inputs of a concatenation that its producers can write straight into their part of the
    output, so that their copies are left out: a RASTER node whose regions each copy one whole
    input, in order, to one contiguous range of the output, the ranges tiling the output (a
    concatenation along the outermost axis that is not 1); an input qualifies when a node of the
    segment produces it and nothing else reads it. ``name -> (raster output, byte offset)``. The
    offsets keep the arena's alignment, and the raster's output is not a segment output."""
    readers = Counter(name for node in segment.nodes for name in node.inputs)
    produced = {out for node in segment.nodes for out in node.outputs}
    kept = set(segment.outputs) | set(segment.inputs)
    aliases: dict[str, tuple[str, int]] = {}
    for node in segment.nodes:
        if node.op is not Op.RASTER or node.attrs.fill is not None or node.outputs[0] in kept:
            continue
        out = node.outputs[0]
        ot = segment.types[out]
        regions = node.attrs.regions
        whole_copies = all(
            region.src_offset == 0 and segment.types[node.inputs[region.input]].dtype == ot.dtype
            and math.prod(region.size) == math.prod(segment.types[node.inputs[region.input]].shape)
            and _contiguous(region.size, region.src_strides) and _contiguous(region.size, region.dst_strides)
            for region in regions)
        ranges = sorted((region.dst_offset, region.dst_offset + math.prod(region.size)) for region in regions)
        tiles = bool(ranges) and ranges[0][0] == 0 and ranges[-1][1] == math.prod(ot.shape) and all(
            a[1] == b[0] for a, b in itertools.pairwise(ranges))
        if not (whole_copies and tiles):
            continue
        copied = Counter(node.inputs[region.input] for region in regions)
        for region in regions:
            x = node.inputs[region.input]
            offset = region.dst_offset * ot.dtype.itemsize
            if x in produced and x not in kept and readers[x] == 1 and copied[x] == 1 and offset % ALIGNMENT == 0:
                aliases[x] = (out, offset)
    return aliases


def _contiguous(size: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether a region's elements are consecutive in row-major order along ``strides``."""
    expected = 1
    for n, stride in zip(reversed(size), reversed(strides)):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


def plan_segment_memory(segment: Segment, exclude: set[str] | frozenset[str] = frozenset(),
                        aliases: Mapping[str, tuple[str, int]] | None = None,
                        scratch: Mapping[int, int] | None = None) -> MemoryPlan:
    """Plan the arena for every tensor produced inside ``segment`` that is neither a
    segment output nor in ``exclude``. Greedy by size (largest first), each tensor placed at
    the lowest offset that does not overlap a live, already-placed tensor. A tensor in
    ``aliases`` (``name -> (other tensor, byte offset)``, see ``in_place_raster_inputs``) lives
    inside the other one, which is then live from the first of them to the last.

    ``scratch`` (node index -> bytes) reserves room that only that node uses while it runs, such
    as a kernel's workspace: placed like a tensor alive for that one step, so the arena keeps a
    gap of that size among the tensors alive then (where the backend may put the workspace over
    bytes the node's predecessors just used). Reserved bytes get no name in ``offsets``."""
    aliases = aliases or {}
    scratch = scratch or {}
    outputs = set(segment.outputs) | set(exclude)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for step, node in enumerate(segment.nodes):
        for name in node.outputs:
            if name not in outputs:
                first.setdefault(name, step)
                last.setdefault(name, step)
        for name in node.inputs:
            if name in first:
                last[name] = step

    def home(name: str) -> tuple[str, int]:
        """The tensor that holds ``name``'s bytes, and where."""
        offset = 0
        while name in aliases:
            name, at = aliases[name]
            offset += at
        return name, offset

    homes = {name: home(name) for name in first if name in aliases}
    inside = {name: where for name, where in homes.items() if where[0] in first}
    for name, (root, _) in inside.items():
        first[root] = min(first[root], first[name])
        last[root] = max(last[root], last[name])
    sizes = {name: _align(max(segment.types[name].nbytes, 1)) for name in first}
    # a reservation is a nameless tensor alive during its node's step only
    reserved = {("scratch", step): _align(bytes_) for step, bytes_ in scratch.items() if bytes_ > 0}
    lives = {**{name: (first[name], last[name]) for name in first}, **{key: (key[1], key[1]) for key in reserved}}
    sizes_all = {**sizes, **reserved}
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[str, int] = {}
    for name in sorted((n for n in lives if n not in inside), key=lambda n: (-sizes_all[n], lives[n][0])):
        (lo, hi), size = lives[name], sizes_all[name]
        busy = sorted((o, e) for o, e, f, la in placed if not (la < lo or f > hi))
        offset = 0
        for o, e in busy:
            if offset + size <= o:
                break
            offset = max(offset, e)
        if name not in reserved:
            offsets[name] = offset
        placed.append((offset, offset + size, lo, hi))
    for name, (root, at) in inside.items():
        offsets[name] = offsets[root] + at
    arena = max((e for _, e, _, _ in placed), default=0)
    return MemoryPlan(offsets, arena, sum(sizes.values()), {name: aliases[name][0] for name in inside})
