"""Liveness-based arena planning: every intermediate tensor of a segment gets an offset in
one buffer, and tensors whose lifetimes do not overlap share bytes. Backends call this at
compile time, so ``run`` performs no allocation for intermediates."""

from __future__ import annotations

from dataclasses import dataclass

from walle_core.backend import Segment

ALIGNMENT = 64  # one cache line, and the widest vector register (AVX-512)


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]  # tensor name -> byte offset in the arena
    arena_bytes: int
    naive_bytes: int  # what one buffer per tensor would need, for reporting


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def plan_segment_memory(segment: Segment, exclude: set[str] | frozenset[str] = frozenset()) -> MemoryPlan:
    """Plan the arena for every tensor produced inside ``segment`` that is neither a
    segment output nor in ``exclude``. Greedy by size (largest first), each tensor placed at
    the lowest offset that does not overlap a live, already-placed tensor."""
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
    sizes = {name: _align(max(segment.types[name].nbytes, 1)) for name in first}
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[str, int] = {}
    for name in sorted(first, key=lambda n: (-sizes[n], first[n])):
        lo, hi, size = first[name], last[name], sizes[name]
        busy = sorted((o, e) for o, e, f, la in placed if not (la < lo or f > hi))
        offset = 0
        for o, e in busy:
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[name] = offset
        placed.append((offset, offset + size, lo, hi))
    arena = max((e for _, e, _, _ in placed), default=0)
    return MemoryPlan(offsets, arena, sum(sizes.values()))
