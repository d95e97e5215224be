"""Fusing chains of RASTER nodes: a raster that reads the output of a single-region raster
reads straight from that raster's source instead, so reshape -> transpose -> slice chains
become one copy.

When the producer's only region enumerates its whole output in row-major order, element
``f`` of its output is its source at ``src_offset + sum(digit_d(f) * src_stride_d)`` with the
digits of ``f`` in the mixed radix of the region's size. A consumer region reading that output
at ``offset + sum(j_k * s_k)`` composes into one strided region exactly when every stride
``s_k`` lands on a single digit (or can be split into whole digits) and no digit can
overflow, i.e. no carry between digits ever happens; then the digits are affine in ``j``.
"""

from __future__ import annotations

import dataclasses
import math

from walle_core.ir import Graph
from walle_core.ops import Op, Region

MAX_REGION_RANK = 8


def _row_major(size: tuple[int, ...]) -> tuple[int, ...]:
    strides = [1] * len(size)
    for d in range(len(size) - 2, -1, -1):
        strides[d] = strides[d + 1] * size[d + 1]
    return tuple(strides)


def _is_whole_enumeration(region: Region, out_size: int) -> bool:
    return (region.dst_offset == 0 and math.prod(region.size) == out_size
            and tuple(region.dst_strides) == _row_major(tuple(region.size)))


def _split(n: int, s: int, size: tuple[int, ...], radix: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
    """(count, digit, coefficient) dims equivalent to ``n`` steps of stride ``s`` (outer first)."""
    if s == 0 or n == 1:
        return [(n, -1, 0)]
    for d in range(len(size) - 1, -1, -1):
        if abs(s) % radix[d] == 0 and (d == 0 or abs(s) < radix[d - 1]):
            c = s // radix[d]
            if abs(c) * (n - 1) < size[d]:
                return [(n, d, c)]
            if c == 1 and d > 0 and n % size[d] == 0:
                outer = _split(n // size[d], radix[d - 1], size, radix)
                return None if outer is None else [*outer, (size[d], d, 1)]
            return None
    return None


def compose(consumer: Region, producer: Region, new_input: int) -> Region | None:
    """``consumer`` (reading ``producer``'s output) rewritten to read ``producer``'s source."""
    size, radix = tuple(producer.size), _row_major(tuple(producer.size))
    dims: list[tuple[int, int, int, int]] = []  # (count, digit, coefficient, dst stride)
    for n, s, dst in zip(consumer.size, consumer.src_strides, consumer.dst_strides):
        parts = _split(n, s, size, radix)
        if parts is None:
            return None
        below = math.prod(count for count, _, _ in parts)
        for count, digit, coef in parts:
            below //= count
            dims.append((count, digit, coef, dst * below))
    if len(dims) > MAX_REGION_RANK:
        return None
    offset, digits = consumer.src_offset, []
    for r in radix:
        digits.append(offset // r)
        offset %= r
    for d in range(len(size)):
        lo = hi = digits[d]
        for count, digit, coef, _ in dims:
            if digit == d:
                lo += min(0, (count - 1) * coef)
                hi += max(0, (count - 1) * coef)
        if lo < 0 or hi >= size[d]:
            return None  # a carry between digits would break the affine form
    src_offset = producer.src_offset + sum(g * s for g, s in zip(digits, producer.src_strides))
    src_strides = tuple(0 if digit < 0 else coef * producer.src_strides[digit] for _, digit, coef, _ in dims)
    return Region(new_input, tuple(c for c, _, _, _ in dims), src_offset, src_strides, consumer.dst_offset,
                  tuple(d for _, _, _, d in dims))


def _drop_unused_inputs(inputs: list[str], regions: list[Region]) -> tuple[list[str], tuple[Region, ...]]:
    used = sorted({r.input for r in regions})
    index = {old: new for new, old in enumerate(used)}
    return [inputs[i] for i in used], tuple(dataclasses.replace(r, input=index[r.input]) for r in regions)


def fuse_raster_chains(graph: Graph) -> Graph:
    """Rewrite rasters that read single-region rasters; the producers die if unused (DCE)."""
    producers = graph.producers()
    for node in graph.nodes:
        if node.op is not Op.RASTER:
            continue
        changed = True
        while changed:
            changed = False
            for idx, name in enumerate(node.inputs):
                src = producers.get(name)
                if src is None or graph.nodes[src].op is not Op.RASTER or name in graph.outputs:
                    continue
                prod = graph.nodes[src]
                regions = prod.attrs.regions
                if not any(r.input == idx for r in node.attrs.regions):
                    continue  # nothing reads it (an empty slice): leave the node alone
                if len(regions) != 1 or not _is_whole_enumeration(regions[0], graph.types[name].size):
                    continue
                source = prod.inputs[regions[0].input]
                inputs = list(node.inputs)
                new_input = inputs.index(source) if source in inputs else len(inputs)
                if new_input == len(inputs):
                    inputs.append(source)
                rewritten = []
                for r in node.attrs.regions:
                    if r.input != idx:
                        rewritten.append(r)
                        continue
                    composed = compose(r, regions[0], new_input)
                    if composed is None:
                        break
                    rewritten.append(composed)
                else:
                    node.inputs, regions_out = _drop_unused_inputs(inputs, rewritten)
                    node.attrs = dataclasses.replace(node.attrs, regions=regions_out)
                    changed = True
                    break
    return graph

