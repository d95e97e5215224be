"""Cost-based assignment of nodes to backends (the seam ``scheduler.Assigner`` leaves open).

Each backend gets a :class:`BackendProfile` — FLOP rate, memory bandwidth and per-op launch
overhead — measured once by three micro-benchmarks run through the backend's own
``compile``/``run`` and cached on disk per (backend, device, threads). A node's estimated time
is ``flops / rate + bytes / bandwidth + launch`` unless the backend's ``estimate_cost`` knows
better; moving a tensor between memory domains costs its bytes at the slower side's bandwidth
plus a launch. :class:`CostAssigner` then picks, by dynamic programming over the topological
order, the assignment with the least estimated total time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from walle_core import ops
from walle_core.backend import Backend, Segment
from walle_core.ir import Graph, GraphBuilder, Node, TensorType
from walle_core.ops import Op, UnaryFn

F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class BackendProfile:
    flops_per_s: float
    bytes_per_s: float
    launch_s: float


def node_flops(node: Node, types: Mapping[str, TensorType]) -> float:
    """Arithmetic work of one execution (multiply-adds count two)."""
    out = types[node.outputs[0]]
    if node.op is Op.MATMUL:
        a = types[node.inputs[0]].shape
        k = a[-2] if node.attrs.trans_a else a[-1]
        return 2.0 * out.size * k
    if node.op is Op.CONV2D:
        w = types[node.inputs[1]].shape
        return 2.0 * out.size * w[1] * w[2] * w[3]
    if node.op is Op.POOL2D:
        return float(out.size * node.attrs.kernel[0] * node.attrs.kernel[1])
    return float(sum(types[n].size for n in node.inputs) + out.size)


def node_bytes(node: Node, types: Mapping[str, TensorType]) -> float:
    return float(sum(types[n].nbytes for n in (*node.inputs, *node.outputs)))


def _profile_segment(op: Op, attrs: object, shapes: list[tuple[int, ...]]) -> tuple[Segment, list[np.ndarray]]:
    b = GraphBuilder()
    names = [b.add_input(f"x{i}", TensorType(F32, s)) for i, s in enumerate(shapes)]
    out = b.emit(op, names, attrs)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    return Segment(b.graph.nodes, names, out, dict(b.graph.types)), arrays


def _time_segment(backend: Backend, segment: Segment, arrays: list[np.ndarray], repeat: int = 5) -> float:
    exe = backend.compile(segment)
    inputs = [backend.to_device(a) for a in arrays]
    backend.to_host(exe.run(inputs)[0])  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        backend.to_host(exe.run(inputs)[0])
        best = min(best, time.perf_counter() - start)
    return best


def measure_profile(backend: Backend) -> BackendProfile:
    """Three micro-benchmarks: a tiny op (launch), a large copy-like op (bandwidth) and a
    GEMM (FLOP rate), each net of the launch overhead."""
    relu = ops.UnaryAttrs(UnaryFn.RELU)
    launch = _time_segment(backend, *_profile_segment(Op.UNARY, relu, [(1,)]), repeat=20)
    n = 1 << 21
    stream = _time_segment(backend, *_profile_segment(Op.UNARY, relu, [(n,)]))
    size = 192
    gemm = _time_segment(backend, *_profile_segment(Op.MATMUL, ops.MatMulAttrs(), [(size, size), (size, size)]))
    return BackendProfile(
        flops_per_s=2.0 * size**3 / max(gemm - launch, 1e-7),
        bytes_per_s=8.0 * n / max(stream - launch, 1e-7),
        launch_s=launch,
    )


class ProfileCache:
    """Profiles on disk (``$WALLE_CACHE_DIR/profiles.json``, default ``~/.cache/walle``), so
    only the first session on a machine pays for the micro-benchmarks."""

    def __init__(self, path: Path | None = None) -> None:
        root = Path(os.environ.get("WALLE_CACHE_DIR", Path.home() / ".cache" / "walle"))
        self.path = path or root / "profiles.json"
        self._lock = threading.Lock()

    def _key(self, backend: Backend) -> str:
        return f"{backend.name}|{backend.availability().device}|{backend.threads}"

    def get(self, backend: Backend) -> BackendProfile:
        key = self._key(backend)
        with self._lock:
            data = self._read()
            if key in data:
                return BackendProfile(**data[key])
            profile = measure_profile(backend)
            data[key] = asdict(profile)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.path)
            return profile

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


class CostModel:
    def __init__(self, backends: Sequence[Backend], profiles: Mapping[str, BackendProfile]) -> None:
        self.backends = list(backends)
        self.profiles = dict(profiles)

    def node_cost(self, node: Node, types: Mapping[str, TensorType], backend: Backend) -> float:
        estimate = backend.estimate_cost(node, types)
        if estimate is not None:
            return estimate
        p = self.profiles[backend.name]
        return node_flops(node, types) / p.flops_per_s + node_bytes(node, types) / p.bytes_per_s + p.launch_s

    def transfer_cost(self, nbytes: int, src: Backend | None, dst: Backend | None) -> float:
        src_domain = src.memory_domain if src else "host"
        dst_domain = dst.memory_domain if dst else "host"
        if src_domain == dst_domain:
            return 0.0
        ends = [b for b in (src, dst) if b is not None]
        return sum(nbytes / self.profiles[b.name].bytes_per_s + self.profiles[b.name].launch_s for b in ends)


class CostAssigner:
    """Minimises the estimated graph time. Dynamic programming over the topological order
    (Viterbi): the state is the backend of the current node; an input produced further back
    is charged a transfer according to the assignment on the best path so far."""

    def __init__(self, cache: ProfileCache | None = None) -> None:
        self.cache = cache or ProfileCache()
        self.last_model: CostModel | None = None

    def assign(self, graph: Graph, backends: Sequence[Backend]) -> list[int]:
        model = CostModel(backends, {b.name: self.cache.get(b) for b in backends})
        self.last_model = model
        producer = graph.producers()
        nodes = graph.nodes
        if not nodes:
            return []
        inf = float("inf")
        supports = [[b.supports(node, graph.types) for b in backends] for node in nodes]
        cost: list[list[float]] = []
        back: list[list[int]] = []
        for i, node in enumerate(nodes):
            row, ptr = [], []
            for j, backend in enumerate(backends):
                if not supports[i][j]:
                    row.append(inf)
                    ptr.append(-1)
                    continue
                own = model.node_cost(node, graph.types, backend)
                if i == 0:
                    row.append(own + self._input_transfers(node, graph, producer, [], 0, backend, model))
                    ptr.append(-1)
                    continue
                best, arg = inf, -1
                for k in range(len(backends)):
                    if cost[i - 1][k] == inf:
                        continue
                    path = self._path(back, i - 1, k)
                    total = cost[i - 1][k] + self._input_transfers(node, graph, producer, path, i, backend,
                                                                   model, backends)
                    if total < best:
                        best, arg = total, k
                row.append(best + own)
                ptr.append(arg)
            cost.append(row)
            back.append(ptr)
        last = min(range(len(backends)), key=lambda k: cost[-1][k])
        if cost[-1][last] == inf:
            raise ValueError("no backend assignment supports every node")
        return self._path(back, len(nodes) - 1, last)

    @staticmethod
    def _path(back: list[list[int]], i: int, k: int) -> list[int]:
        path = [k]
        for step in range(i, 0, -1):
            k = back[step][k]
            path.append(k)
        return path[::-1]

    @staticmethod
    def _input_transfers(node: Node, graph: Graph, producer: Mapping[str, int], path: list[int], i: int,
                         backend: Backend, model: CostModel, backends: Sequence[Backend] = ()) -> float:
        total = 0.0
        for name in node.inputs:
            if name in graph.constants:
                continue
            src_index = producer.get(name)
            src = backends[path[src_index]] if src_index is not None and src_index < i else None
            total += model.transfer_cost(graph.types[name].nbytes, src, backend)
        return total
