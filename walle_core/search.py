"""Cost-based assignment of nodes to backends (the seam ``scheduler.Assigner`` leaves open).

Each backend gets a :class:`BackendProfile` — FLOP rate, memory bandwidth and per-op launch
overhead — measured once by three micro-benchmarks run through the backend's own
``compile``/``run`` and cached on disk per (backend, device, threads). A node's estimated time
is ``flops / rate + bytes / bandwidth + launch`` unless the backend's ``estimate_cost`` knows
better; moving a tensor between memory domains costs its bytes at the slower side's bandwidth
plus a launch. :class:`CostAssigner` then picks, by dynamic programming over the topological
order, the assignment with the least estimated total time. :class:`MeasuringAssigner`
(``search="measure"``) instead times the candidate plans and keeps the fastest, caching the
decision per (model, input shapes, devices) in ``$WALLE_CACHE_DIR/plans.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from walle_core import ops
from walle_core.backend import Backend, Segment
from walle_core.caches import JsonFileCache
from walle_core.ir import Graph, GraphBuilder, Node, TensorType
from walle_core.ops import Op, UnaryFn

F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class BackendProfile:
    flops_per_s: float  # dense GEMM
    bytes_per_s: float
    launch_s: float
    #: convolution rate, measured separately: a backend's convolutions can be much slower (or
    #: faster) than its GEMM; None (old cache entries) falls back to ``flops_per_s``
    conv_flops_per_s: float | None = None


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
    # a 3x3 convolution of ResNet-like proportions: 32 -> 32 channels on 28x28
    conv_attrs = ops.Conv2DAttrs(pads=(1, 1, 1, 1))
    conv = _time_segment(backend, *_profile_segment(Op.CONV2D, conv_attrs, [(1, 32, 28, 28), (32, 32, 3, 3)]))
    return BackendProfile(
        flops_per_s=2.0 * size**3 / max(gemm - launch, 1e-7),
        bytes_per_s=8.0 * n / max(stream - launch, 1e-7),
        launch_s=launch,
        conv_flops_per_s=2.0 * 32 * 28 * 28 * 32 * 9 / max(conv - launch, 1e-7),
    )


class ProfileCache(JsonFileCache):
    """Profiles on disk (``profiles.json``), so only the first session on a machine pays for
    the micro-benchmarks."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__("profiles.json", path)

    def _key(self, backend: Backend) -> str:
        return f"v2|{backend.name}|{backend.availability().device}|{backend.threads}"  # v2: conv rate

    def get(self, backend: Backend) -> BackendProfile:
        key = self._key(backend)
        with self._lock:
            data = self._read()
            if key in data:
                return BackendProfile(**data[key])
            profile = measure_profile(backend)
            data[key] = asdict(profile)
            self._write(data)
            return profile


class CostModel:
    def __init__(self, backends: Sequence[Backend], profiles: Mapping[str, BackendProfile]) -> None:
        self.backends = list(backends)
        self.profiles = dict(profiles)

    def node_cost(self, node: Node, types: Mapping[str, TensorType], backend: Backend) -> float:
        estimate = backend.estimate_cost(node, types)
        if estimate is not None:
            return estimate
        p = self.profiles[backend.name]
        rate = p.conv_flops_per_s if node.op is Op.CONV2D and p.conv_flops_per_s else p.flops_per_s
        return node_flops(node, types) / rate + node_bytes(node, types) / p.bytes_per_s + p.launch_s

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


# -- measurement mode (pre-inference) ------------------------------------------------------
# Estimates rank plans well but not perfectly (fusion, caches, queue behaviour are not in the
# model), so ``search="measure"`` runs the few plausible plans once on random data and keeps
# the fastest, as MNN's pre-inference does. The decision is cached on disk.

class FixedAssignment:
    """An :class:`~walle_core.scheduler.Assigner` replaying a precomputed choice."""

    def __init__(self, choice: Sequence[int]) -> None:
        self.choice = list(choice)

    def assign(self, graph: Graph, backends: Sequence[Backend]) -> list[int]:
        if len(self.choice) != len(graph.nodes):
            raise ValueError(f"assignment has {len(self.choice)} entries for {len(graph.nodes)} nodes")
        return list(self.choice)


def random_value(ttype: TensorType, rng: np.random.Generator) -> np.ndarray:
    """Data to time a tensor with. Integers and booleans are zero so that index-like inputs
    (GATHER indices, shapes) stay in range; floats are standard normal."""
    if ttype.dtype.kind == "f":
        return rng.standard_normal(ttype.shape).astype(ttype.dtype)
    return np.zeros(ttype.shape, ttype.dtype)


def candidate_assignments(graph: Graph, backends: Sequence[Backend],
                          cost: CostAssigner) -> dict[str, list[int]]:
    """The plans worth measuring: the cost-model plan ("cost") and, per backend, the plan that
    gives it every node it supports with per-op fallback (labelled with its name). A plan
    found twice is measured once, under both labels joined by "+" (e.g. "cost+cpu_x86")."""
    from walle_core.errors import WalleError
    from walle_core.scheduler import FirstSupportingAssigner

    found: dict[str, list[int]] = {"cost": cost.assign(graph, backends)}
    for j, first in enumerate(backends):
        order = [j, *(k for k in range(len(backends)) if k != j)]
        try:
            local = FirstSupportingAssigner().assign(graph, [backends[k] for k in order])
        except WalleError:
            continue
        choice = [order[k] for k in local]
        same = next((label for label, c in found.items() if c == choice), None)
        if same is None:
            found[first.name] = choice
        else:
            found = {f"{label}+{first.name}" if label == same else label: c for label, c in found.items()}
    return found


def _plan_runner(graph: Graph, backends: Sequence[Backend], choice: Sequence[int]) -> Callable[[], float]:
    """Compiles the plan ``choice``; the returned function runs it once on seeded random
    inputs and returns the seconds it took."""
    from walle_core.scheduler import schedule
    from walle_core.session import Plan

    sched = schedule(graph, backends, FixedAssignment(choice))
    plan = Plan(graph, sched, [s.backend.compile(s.segment) for s in sched.segments])
    rng = np.random.default_rng(0)
    feeds = {name: random_value(graph.types[name], rng) for name in graph.inputs}

    def run_once() -> float:
        start = time.perf_counter()
        plan.execute(feeds)
        return time.perf_counter() - start

    return run_once


def time_plans(graph: Graph, backends: Sequence[Backend], candidates: Mapping[str, Sequence[int]],
               warmup: int = 2, repeat: int = 5, give_up_factor: float = 3.0) -> dict[str, float]:
    """Median seconds of one run of every candidate plan on seeded random inputs.

    Candidates run in interleaved rounds, so that process warm-up (thread pools, allocator,
    lazy device setup) and load from other processes hit all of them alike rather than
    whichever is timed first. After ``warmup`` rounds, a candidate ``give_up_factor`` times
    slower than the best cannot win: it keeps its warm-up time and skips the timed rounds.
    """
    runners = {label: _plan_runner(graph, backends, choice) for label, choice in candidates.items()}
    for _ in range(max(warmup - 1, 0)):
        for run_once in runners.values():
            run_once()
    warm = {label: run_once() for label, run_once in runners.items()}
    best = min(warm.values(), default=0.0)
    samples: dict[str, list[float]] = {label: [] for label in runners if warm[label] <= give_up_factor * best}
    for _ in range(repeat):
        for label, times in samples.items():
            times.append(runners[label]())
    return {label: float(np.median(samples[label])) if samples.get(label) else warm[label] for label in runners}


def node_times(graph: Graph, backends: Sequence[Backend], choice: Sequence[int],
               warmup: int = 1, repeat: int = 3) -> list[float]:
    """Measured seconds of every node on its assigned backend, each compiled as a
    single-node segment and timed in isolation. Backend-agnostic; the time includes reading
    the outputs back to the host (the only synchronisation point every backend offers), so
    device backends appear slower per op than inside a fused segment."""
    rng = np.random.default_rng(0)
    times = []
    for node, j in zip(graph.nodes, choice):
        backend = backends[j]
        inputs = [n for n in dict.fromkeys(node.inputs) if n not in graph.constants]
        constants = {n: graph.constants[n] for n in node.inputs if n in graph.constants}
        types = {n: graph.types[n] for n in (*node.inputs, *node.outputs)}
        exe = backend.compile(Segment([node], inputs, list(node.outputs), types, constants))
        args = [backend.to_device(random_value(graph.types[n], rng)) for n in inputs]
        samples = []
        for step in range(warmup + repeat):
            start = time.perf_counter()
            for value in exe.run(args):
                backend.to_host(value)
            if step >= warmup:
                samples.append(time.perf_counter() - start)
        times.append(float(np.median(samples)))
    return times


def predicted_times(graph: Graph, backends: Sequence[Backend], choice: Sequence[int],
                    model: CostModel) -> tuple[list[float], float]:
    """Estimated seconds per node and the estimated total of the transfers the plan needs."""
    producer = graph.producers()
    per_node = [model.node_cost(node, graph.types, backends[j]) for node, j in zip(graph.nodes, choice)]
    transfers = sum(
        CostAssigner._input_transfers(node, graph, producer, list(choice), i, backends[j], model, backends)
        for i, (node, j) in enumerate(zip(graph.nodes, choice))
    )
    outputs = {name for name in graph.outputs if name in producer}
    transfers += sum(model.transfer_cost(graph.types[name].nbytes, backends[choice[producer[name]]], None)
                     for name in outputs)
    return per_node, transfers


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their average rank).
    NaN when either side is constant or shorter than two."""
    if len(a) != len(b):
        raise ValueError(f"rank_correlation: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def graph_key(graph: Graph) -> str:
    """A digest of the lowered graph — ops, attributes, every tensor type and the constants'
    bytes — so it identifies the model and the input shapes it was lowered at."""
    import hashlib

    h = hashlib.sha256()
    for node in graph.nodes:
        h.update(repr((node.op.value, node.inputs, node.outputs, node.attrs)).encode())
    for name in sorted(graph.types):
        h.update(f"{name}:{graph.types[name]};".encode())
    for name in sorted(graph.constants):
        h.update(name.encode())
        h.update(np.ascontiguousarray(graph.constants[name]).tobytes())
    return h.hexdigest()


def device_key(backends: Sequence[Backend]) -> str:
    return ",".join(f"{b.name}@{b.availability().device}x{b.threads}" for b in backends)


@dataclass(frozen=True)
class PlanDecision:
    """The measured winner among the candidate plans, with every candidate's time (seconds)."""

    winner: str
    assignment: list[str]  # backend name per node
    timings: dict[str, float]


class PlanCache(JsonFileCache):
    """Measured decisions on disk (``plans.json``), keyed by the model and input shapes
    (:func:`graph_key`), the input shapes spelled out, and the device set with thread
    counts, so the second load of a model skips the measurement."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__("plans.json", path)

    @staticmethod
    def key(graph: Graph, backends: Sequence[Backend]) -> str:
        shapes = ";".join(str(graph.types[name]) for name in graph.inputs)
        return f"{graph_key(graph)}|{shapes}|{device_key(backends)}"

    def get(self, key: str) -> PlanDecision | None:
        entry = self.get_entry(key)
        return None if entry is None else PlanDecision(**entry)

    def put(self, key: str, decision: PlanDecision) -> None:
        self.put_entry(key, asdict(decision))


class MeasuringAssigner:
    """``search="measure"``: times the candidate plans (:func:`candidate_assignments`) and
    keeps the fastest, or replays a cached decision. A graph specialised on input values
    cannot be timed on random data, so it gets the cost-model plan."""

    def __init__(self, cost: CostAssigner | None = None, plans: PlanCache | None = None,
                 timer: Callable[..., dict[str, float]] | None = None) -> None:
        self.cost = cost or CostAssigner()
        self.plans = plans or PlanCache()
        self.timer = timer or time_plans
        self.last_decision: PlanDecision | None = None
        self.last_cache_hit = False

    def assign(self, graph: Graph, backends: Sequence[Backend]) -> list[int]:
        if graph.value_inputs:
            return self.cost.assign(graph, backends)
        key = self.plans.key(graph, backends)
        cached = self.plans.get(key)
        choice = self._replay(cached, graph, backends) if cached else None
        if choice is not None:
            self.last_decision, self.last_cache_hit = cached, True
            return choice
        candidates = candidate_assignments(graph, backends, self.cost)
        timings = self.timer(graph, backends, candidates)
        winner = min(timings, key=timings.__getitem__)
        decision = PlanDecision(winner, [backends[j].name for j in candidates[winner]], timings)
        self.plans.put(key, decision)
        self.last_decision, self.last_cache_hit = decision, False
        return candidates[winner]

    @staticmethod
    def _replay(decision: PlanDecision, graph: Graph, backends: Sequence[Backend]) -> list[int] | None:
        """The cached assignment as indices, or None if it no longer fits (stale entry)."""
        index = {b.name: j for j, b in enumerate(backends)}
        if len(decision.assignment) != len(graph.nodes) or any(n not in index for n in decision.assignment):
            return None
        choice = [index[n] for n in decision.assignment]
        if not all(backends[j].supports(node, graph.types) for node, j in zip(graph.nodes, choice)):
            return None
        return choice


def make_assigner(search: str) -> CostAssigner | MeasuringAssigner:
    """The assigner behind ``load(..., search=...)`` for "cost" and "measure"."""
    if search == "cost":
        return CostAssigner()
    if search == "measure":
        return MeasuringAssigner()
    raise ValueError(f"search must be 'first', 'cost' or 'measure', got {search!r}")
