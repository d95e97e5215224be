"""Sessions: load a model once, plan it per input-shape signature, run it many times.

Planning (lowering to atomic ops at concrete shapes, optimisation, scheduling, backend
compilation) happens once per distinct set of input shapes and is cached; ``run`` then only
moves tensors between segments and makes one call per segment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from walle_core import plugins
from walle_core.backend import Backend, Executable
from walle_core.cancel import CancelToken
from walle_core.errors import InputValueRequired, WalleError
from walle_core.ir import Graph, TensorType
from walle_core.optimize import optimize
from walle_core.scheduler import Schedule, schedule

if TYPE_CHECKING:
    from walle_core.onnx.lower import OutputSlot

BackendChoice = str | Sequence[str]


@dataclass(frozen=True)
class InputSpec:
    """A model input. ``kind`` says what to feed: "tensor" an array; "sequence" a list of
    arrays; "optional" an array or None; "optional_sequence" a list or None. ``dtype`` and
    ``shape`` describe the tensor (or each element); element shapes are not enforced."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # str / None: a symbolic dimension
    kind: str = "tensor"

    @property
    def is_sequence(self) -> bool:
        return self.kind in ("sequence", "optional_sequence")


@dataclass
class Plan:
    """Everything needed to run the model at one input-shape signature."""

    graph: Graph
    schedule: Schedule
    executables: list[Executable]
    #: how the flat graph outputs form the model's outputs; None: one tensor each
    layout: list[OutputSlot] | None = None

    @property
    def segments(self) -> list[tuple[str, list]]:
        return [(s.backend.name, s.segment.nodes) for s in self.schedule.segments]

    @property
    def copies(self) -> int:
        return self.schedule.copies

    def outputs(self, flat: list[np.ndarray]) -> list[Any]:
        """The model's outputs from the flat graph outputs: arrays, lists (sequences) or None."""
        if self.layout is None:
            return flat
        result: list[Any] = []
        at = 0
        for slot in self.layout:
            part = flat[at:at + slot.count]
            at += slot.count
            result.append(part[0] if slot.kind == "tensor" else part if slot.kind == "sequence" else None)
        return result

    def execute(self, feeds: Mapping[str, np.ndarray], cancel: CancelToken | None = None) -> list[np.ndarray]:
        """Run with ``feeds`` keyed by IR input name; returns the flat graph outputs. With
        ``cancel``, every segment runs cancellably (see ``Executable.run_cancellable``)."""
        graph = self.graph
        # every value, per memory domain it currently lives in (a tensor crosses at most once)
        values: dict[str, dict[str, Any]] = {name: {"host": v} for name, v in feeds.items()}
        owner: dict[str, Backend | None] = dict.fromkeys(feeds)  # None: host
        for sched, exe in zip(self.schedule.segments, self.executables):
            backend = sched.backend
            args = [_fetch(values[name], owner[name], backend) for name in sched.segment.inputs]
            results = exe.run(args) if cancel is None else exe.run_cancellable(args, cancel)
            for name, value in zip(sched.segment.outputs, results):
                values[name] = {backend.memory_domain: value}
                owner[name] = backend
        outputs = []
        for name in graph.outputs:
            if name in graph.constants:
                outputs.append(np.array(graph.constants[name], copy=True))
            elif name in feeds:
                outputs.append(np.array(feeds[name], copy=True))
            else:
                outputs.append(_fetch(values[name], owner[name], None))
        return outputs


def _fetch(copies: dict[str, Any], owner: Backend | None, dst: Backend | None) -> Any:
    """The value in ``dst``'s memory domain, moving (and remembering) it if needed."""
    domain = dst.memory_domain if dst is not None else "host"
    if domain not in copies:
        if "host" not in copies:
            copies["host"] = owner.to_host(copies[owner.memory_domain])  # type: ignore[union-attr]
        if domain != "host":
            copies[domain] = dst.to_device(copies["host"])  # type: ignore[union-attr]
    return copies[domain]


class _ValuePlans:
    """Plans of one shape signature that were specialised on the values of some inputs
    (shape tensors fed at run time). Bounded: the oldest plan goes first."""

    LIMIT = 16

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.plans: dict[tuple, Plan] = {}

    def _key(self, feeds: Mapping[str, Any]) -> tuple | None:
        if not all(isinstance(feeds.get(n), np.ndarray) for n in self.names):
            return None
        return tuple((feeds[n].dtype.str, feeds[n].shape, feeds[n].tobytes()) for n in self.names)

    def get(self, feeds: Mapping[str, Any]) -> Plan | None:
        key = self._key(feeds)
        return None if key is None else self.plans.get(key)

    def put(self, feeds: Mapping[str, Any], plan: Plan) -> None:
        key = self._key(feeds)
        if key is not None:
            if len(self.plans) >= self.LIMIT:
                self.plans.pop(next(iter(self.plans)))
            self.plans[key] = plan


def _array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != dtype:
        raise WalleError(f"input {name!r}: dtype {array.dtype} does not match {dtype}")
    return np.asarray(array, order="C")


def _signature(spec: InputSpec, value: Any) -> Any:
    """The part of a plan's key one input contributes: its shape; for a sequence its length
    and element shapes; for an optional whether it is present."""
    if value is None:
        return None
    if spec.is_sequence:
        return ("sequence", tuple(tuple(getattr(item, "shape", item)) for item in value))
    return tuple(getattr(value, "shape", value))


def resolve_backends(backend: BackendChoice, threads: int) -> list[Backend]:
    """Instantiate the backends named by ``backend``, in preference order. The reference
    backend always comes last, as the fallback for ops the others decline."""
    classes = {cls.name: cls for cls in plugins.backend_classes()}
    if isinstance(backend, str) and backend == "auto":
        names = [cls.name for cls in classes.values() if cls.availability().available]
    else:
        names = [backend] if isinstance(backend, str) else list(backend)
    chosen: list[Backend] = []
    for name in names:
        if name not in classes:
            broken = plugins.broken_plugins().get(name)
            hint = f" (its plugin failed to load: {broken})" if broken else ""
            raise WalleError(f"unknown backend {name!r}{hint}; registered: {sorted(classes)}")
        avail = classes[name].availability()
        if not avail.available:
            raise WalleError(f"backend {name!r} is not available: {avail.reason}")
        if all(b.name != name for b in chosen):
            chosen.append(classes[name](threads=threads))
    if all(b.name != "reference" for b in chosen) and "reference" in classes:
        chosen.append(classes["reference"](threads=threads))
    return chosen


class Session:
    """A loaded model. ``run`` is thread-safe; plans are shared between threads."""

    def __init__(self, model: Any, backend: BackendChoice = "auto", threads: int = 1,
                 search: str = "first") -> None:
        from walle_core import model_cache
        from walle_core.compiled import CompiledModel, is_compiled

        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        self._rules: dict[tuple[str, str], Any] = {}
        cached = None
        if is_compiled(model):  # already atomic: neither the ONNX import nor the rules needed
            self.model = CompiledModel(model)
        elif (cached := model_cache.open_cached(model)) is not None:
            self.model = cached
        else:
            from walle_core.onnx import load_model

            self.model = load_model(model)
            self._rules = plugins.decomposition_rules()
            self.model.check_supported(self._rules)
        self.backends = resolve_backends(backend, self.threads)
        if search not in ("first", "cost", "measure"):
            raise WalleError(f"search must be 'first', 'cost' or 'measure', got {search!r}")
        self._assigner = None
        if search != "first":
            from walle_core.search import make_assigner

            self._assigner = make_assigner(search)
        self.inputs = [InputSpec(s.name, np.dtype(s.dtype), tuple(s.shape), s.kind) for s in self.model.inputs]
        self.output_names = list(self.model.output_names)
        self._plans: dict[tuple, Plan | _ValuePlans] = {}
        self._lock = threading.Lock()
        if all(spec.kind == "tensor" and all(isinstance(d, int) for d in spec.shape) for spec in self.inputs):
            # static model: plan now, so every error surfaces at load time (unless the plan
            # depends on input values, which only a run provides)
            try:
                plan = self._plan({spec.name: tuple(spec.shape) for spec in self.inputs})
            except InputValueRequired:
                pass
            else:
                if not hasattr(self.model, "lowered"):  # lowered from ONNX here, not compiled
                    model_cache.store(model, self.model, plan.graph, plan.layout)

    # -- planning ---------------------------------------------------------------------
    def _plan(self, feeds: Mapping[str, Any]) -> Plan:
        """The plan for ``feeds`` (arrays, or bare shapes when no value is needed; a list of
        those for a sequence, None for an absent optional), keyed by ONNX input name."""
        key = tuple(_signature(spec, feeds[spec.name]) for spec in self.inputs)
        feeds = self._flatten(feeds)
        entry = self._plans.get(key)
        if isinstance(entry, Plan):
            return entry
        if isinstance(entry, _ValuePlans):
            plan = entry.get(feeds)
            if plan is not None:
                return plan
        with self._lock:
            entry = self._plans.get(key)
            if isinstance(entry, Plan):
                return entry
            if isinstance(entry, _ValuePlans) and entry.get(feeds) is not None:
                return entry.get(feeds)  # type: ignore[return-value]
            plan = self._build_plan(key, feeds)
            if plan.graph.value_inputs:
                if not isinstance(entry, _ValuePlans):
                    entry = self._plans[key] = _ValuePlans(tuple(plan.graph.value_inputs))
                entry.put(feeds, plan)
            else:
                self._plans[key] = plan
        return plan

    def _build_plan(self, key: tuple, feeds: Mapping[str, Any]) -> Plan:
        types: dict[str, Any] = {}
        for spec, sig in zip(self.inputs, key):
            if sig is None:
                types[spec.name] = None
            elif spec.is_sequence:
                types[spec.name] = [TensorType(spec.dtype, shape) for shape in sig[1]]
            else:
                types[spec.name] = TensorType(spec.dtype, sig)
        values = {name: v for name, v in feeds.items() if isinstance(v, np.ndarray)}
        if hasattr(self.model, "lowered"):  # a compiled model: already lowered and optimised
            graph, layout = self.model.lowered(types), None
        else:
            from walle_core.onnx import lower_with_layout

            graph, layout = lower_with_layout(self.model, types, self._rules, input_values=values)
            graph = optimize(graph)
        sched = schedule(graph, self.backends, self._assigner)
        executables = [s.backend.compile(s.segment) for s in sched.segments]
        if hasattr(self.model, "drop_weight_pages"):
            self.model.drop_weight_pages()
        return Plan(graph, sched, executables, layout)

    def _flatten(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Feeds keyed by IR input: sequence elements get their own inputs, absent optionals none."""
        flat: dict[str, Any] = {}
        for spec in self.inputs:
            value = feeds[spec.name]
            if value is None:
                continue
            if spec.is_sequence:
                from walle_core.onnx import element_name  # only ONNX models have sequences

                flat.update({element_name(spec.name, i): item for i, item in enumerate(value)})
            else:
                flat[spec.name] = value
        return flat

    def plan_for(self, feeds: Mapping[str, Any]) -> Plan:
        """The plan that ``run(feeds)`` would use (arrays or bare shapes accepted)."""
        self._check_feeds(feeds)
        return self._plan(feeds)

    # -- running ----------------------------------------------------------------------
    def _check_feeds(self, feeds: Mapping[str, Any]) -> None:
        expected = {spec.name for spec in self.inputs}
        missing = expected - set(feeds)
        extra = set(feeds) - expected
        if missing or extra:
            raise WalleError(f"inputs mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for spec in self.inputs:
            value = feeds[spec.name]
            if value is None:
                if not spec.kind.startswith("optional"):
                    raise WalleError(f"input {spec.name!r}: None given for a {spec.kind} input")
                continue
            if spec.is_sequence:
                if not isinstance(value, (list, tuple)):
                    raise WalleError(f"input {spec.name!r}: a sequence input takes a list of arrays, "
                                     f"got {type(value).__name__}")
                continue
            shape = tuple(getattr(value, "shape", value))
            if spec.kind == "tensor" and (len(shape) != len(spec.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, shape)
            )):
                raise WalleError(f"input {spec.name!r}: shape {tuple(shape)} does not match {spec.shape}")

    def _prepare(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Feeds as C-contiguous arrays of the declared dtype (lists of them for sequences)."""
        prepared: dict[str, Any] = dict(feeds)
        for spec in self.inputs:
            value = feeds.get(spec.name)
            if value is None:
                continue
            if spec.is_sequence and isinstance(value, (list, tuple)):
                prepared[spec.name] = [_array(f"{spec.name}[{i}]", item, spec.dtype) for i, item in enumerate(value)]
            elif not spec.is_sequence:
                prepared[spec.name] = _array(spec.name, value, spec.dtype)
        return prepared

    def run(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None, *,
            cancel: CancelToken | None = None) -> dict[str, Any]:
        """Run the model. Sequence outputs come back as lists of arrays, absent optionals as None.
        Once ``cancel`` is cancelled the run stops at the next point its backends check
        (between blocks of work in native kernels) and raises ``RunCancelled``."""
        arrays = self._prepare(feeds)
        plan = self.plan_for(arrays)
        outputs = dict(zip(self.output_names, plan.outputs(plan.execute(self._flatten(arrays), cancel))))
        if output_names is None:
            return outputs
        unknown = [n for n in output_names if n not in outputs]
        if unknown:
            raise WalleError(f"unknown outputs {unknown}; the model has {self.output_names}")
        return {name: outputs[name] for name in output_names}

    # -- introspection ----------------------------------------------------------------
    def info(self, feeds: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Op histograms and how each ONNX op type decomposed (at ``feeds``' shapes, or the
        static / all-ones shapes)."""
        if feeds is None:  # sequences empty, optionals absent
            feeds = {s.name: [] if s.kind == "sequence" else None if s.kind.startswith("optional")
                     else tuple(d if isinstance(d, int) else 1 for d in s.shape) for s in self.inputs}
        plan = self.plan_for(feeds)
        decompositions: dict[str, dict[str, int]] = {}
        for node in plan.graph.nodes:
            per_op = decompositions.setdefault(node.origin_op or "?", {})
            per_op[node.op.value] = per_op.get(node.op.value, 0) + 1
        return {
            "onnx_ops": self.model.op_types(),
            "atomic_ops": plan.graph.op_histogram(),
            "decompositions": decompositions,
            "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)} for s in self.inputs],
            "outputs": list(self.output_names),
            "segments": [{"backend": b, "nodes": len(n)} for b, n in plan.segments],
            "copies": plan.copies,
        }


def load(model: Any, backend: BackendChoice = "auto", threads: int = 1, search: str = "first") -> Session:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) or a compiled ``.walle`` file
    (see ``walle_core.compiled``) for ``backend`` ("auto", a
    backend name, or a list of names in preference order). ``search="first"`` gives each op
    to the first backend that supports it; ``"cost"`` minimises the estimated time across
    the backends, transfers included; ``"measure"`` times the candidate plans once and keeps
    the fastest, caching the decision on disk (see ``walle_core.search``)."""
    return Session(model, backend=backend, threads=threads, search=search)
