"""The stream engine: validation, watermark, shared matching, features, durable state.

One :class:`StreamEngine` serves every task on a device. Per input it

1. validates the event (bad ones are counted and logged, never raised),
2. applies the late-event policy against the watermark (newest ts - allowed lateness),
3. adds the event to every feature window that wants it,
4. advances the shared automaton of each partition field (the native matcher of
   :mod:`walle_stream.native` when it is built and every trigger of the field can run on it,
   else the Python :class:`TriggerAutomaton`; ``stats()["matchers"]`` says which), and
5. for every trigger that fires, reads the task's features and calls the sinks.

Every ``commit_every`` inputs the changed state is committed to SQLite together with the
input offset (see :mod:`walle_stream.state`), so a restarted engine resumes exactly where
the last commit left off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walle_stream.automaton import TriggerAutomaton
from walle_stream.errors import StreamConfigError
from walle_stream.events import Event, EventValidator
from walle_stream.native import NativeAutomaton, copy_state, native_available, unsupported_reason
from walle_stream.pattern import EVENT_KEY, Trigger
from walle_stream.sinks import FireSink
from walle_stream.sources import BoundedEventQueue, read_jsonl
from walle_stream.state import RawJSON, StateStore
from walle_stream.tasks import StreamTask
from walle_stream.windows import FeatureSpec, FeatureStore

log = logging.getLogger("walle_stream")

LATE_POLICIES = ("drop", "include")
MATCHERS = ("auto", "native", "python")
#: latency samples kept for percentiles; older ones are overwritten ring-wise
_LATENCY_SAMPLES = 100_000


@dataclass(frozen=True)
class EngineConfig:
    """``key_name`` is what the event's own ``key`` field stands for: a trigger with
    ``key = "user"`` partitions by ``event.key`` when ``key_name`` is ``"user"``.

    ``allowed_lateness_ms`` sets the watermark; events older than it are dropped and
    counted (``late_policy="drop"``) or processed like any other (``"include"``).
    ``max_disorder_ms`` is the validator's hard limit beyond which events are rejected.

    ``matcher``: ``"auto"`` runs a partition field on the native matcher when it is built and
    all the field's triggers can run on it (no ``where`` predicates), else on the Python
    automaton, switching (state included) as triggers come and go; ``"native"`` requires
    the native matcher; ``"python"`` always uses the Python automaton.

    ``batch_size``: inputs that ``run_jsonl`` / ``run_queue`` match as one batch. Results do
    not depend on it; larger batches cost less per event (one native call, no per-event
    Python wrapper) but an event's firings are delivered only once its batch is matched,
    which is the latency cost (see the README's benchmark)."""

    key_name: str = "user"
    allowed_lateness_ms: int = 5_000
    late_policy: str = "drop"
    max_disorder_ms: int = 3_600_000
    commit_every: int = 1_000
    evict_every: int = 10_000
    record_fires: bool = False
    matcher: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise StreamConfigError(f"[stream] matcher must be one of {', '.join(MATCHERS)}, got {self.matcher!r}")
        if self.matcher == "native" and not native_available():
            raise StreamConfigError("[stream] matcher='native' but the native matcher is not built")
        if self.late_policy not in LATE_POLICIES:
            raise StreamConfigError(f"[stream] late_policy must be one of {', '.join(LATE_POLICIES)}, "
                                    f"got {self.late_policy!r}")
        for name in ("allowed_lateness_ms", "max_disorder_ms"):
            if getattr(self, name) < 0:
                raise StreamConfigError(f"[stream] {name} must be >= 0")
        for name in ("commit_every", "evict_every", "batch_size"):
            if getattr(self, name) <= 0:
                raise StreamConfigError(f"[stream] {name} must be positive")
        if self.allowed_lateness_ms > self.max_disorder_ms:
            raise StreamConfigError("[stream] allowed_lateness_ms must not exceed max_disorder_ms")


@dataclass(slots=True)
class Fire:
    """One firing: the task, the key, its features and the event that completed the match."""

    task: str
    key: str
    features: dict[str, Any]
    event: Event
    offset: int


class StreamEngine:
    def __init__(self, tasks: Iterable[StreamTask] = (), config: EngineConfig | None = None,
                 sinks: Iterable[FireSink] = (), state_path: str | Path | None = None,
                 source: str = "push") -> None:
        self.config = config or EngineConfig()
        self.sinks = list(sinks)
        self.validator = EventValidator(self.config.max_disorder_ms)
        self.automata: dict[str, TriggerAutomaton | NativeAutomaton] = {}
        self.matchers: dict[str, str] = {}  # partition field -> "native" or "python: <why>"
        self._python_only: dict[str, dict[str, str]] = {}  # field -> {trigger: why not native}
        self.features = FeatureStore()
        self.tasks: dict[str, StreamTask] = {}
        self._task_features: dict[str, list[tuple[str, str]]] = {}  # task -> [(feature name, state id)]
        self.offset = 0
        self.source = source
        self.events = 0
        self.late_dropped = 0
        self.fired: dict[str, int] = {}
        self.features_produced = 0
        self.latencies: list[float] = []
        self._latency_at = 0  # next sample to overwrite once the ring is full
        self._in_batch = 0  # events of the batch being delivered (0: none)
        self._dirty_matches: set[tuple[str, str]] = set()
        self._pending_fires: list[tuple[int, str, str, int, Any]] = []
        self.inputs = 0  # every input line / pushed object, valid or not
        self._evict_bucket = 0
        for task in tasks:
            self.add_task(task)
        self.store: StateStore | None = None
        if state_path is not None:
            self._open_state(Path(state_path))

    # -- tasks -------------------------------------------------------------------------

    def partition_field(self, name: str) -> str:
        return EVENT_KEY if name in (EVENT_KEY, self.config.key_name) else name

    def add_task(self, task: StreamTask) -> None:
        """Register a task's trigger and features; other tasks' partial matches are kept."""
        self._check_not_mid_batch("added")
        if task.name in self.tasks:
            raise StreamConfigError(f"[stream] task '{task.name}' is already registered")
        if task.trigger.name != task.name:
            task = dataclasses.replace(task, trigger=dataclasses.replace(task.trigger, name=task.name))
        field = self.partition_field(task.trigger.key)
        self._fit_matcher(field, task.trigger)
        self.automata[field].add(task.trigger)
        self.tasks[task.name] = task
        self._task_features[task.name] = [
            (spec.name, self.features.register(dataclasses.replace(spec, key=field))) for spec in task.features
        ]
        self.fired.setdefault(task.name, 0)

    def add_trigger(self, trigger: Trigger, features: Iterable[FeatureSpec] = ()) -> None:
        """The Python-API way: a :class:`Trigger` (e.g. from ``Pattern...trigger(name)``)."""
        self.add_task(StreamTask(trigger.name, trigger, tuple(features)))

    def remove_task(self, name: str) -> None:
        self._check_not_mid_batch("removed")
        task = self.tasks.pop(name, None)
        if task is None:
            raise StreamConfigError(f"[stream] no task named '{name}' is registered")
        field = self.partition_field(task.trigger.key)
        self.automata[field].remove(name)
        self._fit_matcher(field, removed=name)
        del self._task_features[name]
        self.features.unregister_unused({sid for pairs in self._task_features.values() for _, sid in pairs})

    def _check_not_mid_batch(self, what: str) -> None:
        # a batch is matched before its firings are delivered: a change made by a sink would
        # miss the batch's later events, which one-by-one processing would have seen
        if self._in_batch > 1:
            raise StreamConfigError(f"[stream] a task cannot be {what} from a sink while a batch of "
                                    f"{self._in_batch} inputs is delivered; use batch_size=1 for that")

    def _fit_matcher(self, field: str, adding: Trigger | None = None, removed: str | None = None) -> None:
        """Choose the matcher of ``field`` for its triggers (plus ``adding``; ``removed`` was
        just taken out) and switch to it if needed, carrying every key's partial matches over."""
        current = self.automata.get(field)
        # triggers the native matcher cannot run, per field: kept up to date here so that
        # registering n triggers costs O(n), not a re-check of all of them per trigger
        python_only = self._python_only.setdefault(field, {})
        if removed is not None:
            python_only.pop(removed, None)
        if adding is not None:
            why = unsupported_reason(adding)
            if why is not None:
                if self.config.matcher == "native":
                    raise StreamConfigError(f"[stream] matcher='native' cannot run {why}")
                python_only[adding.name] = why
        if self.config.matcher == "python":
            why_python = "matcher='python'"
        elif not native_available():
            why_python = "the native matcher is not built"
        else:
            why_python = next(iter(python_only.values()), None)
        kind = NativeAutomaton if why_python is None else TriggerAutomaton
        self.matchers[field] = "native" if why_python is None else f"python: {why_python}"
        if isinstance(current, kind):
            return
        replacement = kind(current.triggers.values() if current is not None else ())
        if current is not None:
            copy_state(current, replacement)
            log.info("[stream] partition field '%s' now matches on the %s", field,
                     "native matcher" if why_python is None else f"Python automaton ({why_python})")
        self.automata[field] = replacement

    # -- input -------------------------------------------------------------------------

    def push(self, raw: Any, offset: int | None = None) -> list[Fire]:
        """Process one event (an :class:`Event` or a decoded JSON object). ``offset`` is
        the source position after it (default: one more than the previous one)."""
        return self.push_many([raw], None if offset is None else [offset])

    def push_line(self, line: str | bytes, offset: int | None = None) -> list[Fire]:
        """Process one JSONL line (decoded and checked like ``push``)."""
        return self.push_lines([line], None if offset is None else [offset])

    def push_many(self, raws: Sequence[Any], offsets: Sequence[int] | None = None) -> list[Fire]:
        """Process a batch of events as one unit of matching (see :meth:`_run_batch`): the
        same firings, features and state as pushing them one by one, cheaper per event.
        Returns the batch's firings in event order."""
        return self._run_batch(raws, offsets, self.validator.check)

    def push_lines(self, lines: Sequence[str | bytes], offsets: Sequence[int] | None = None) -> list[Fire]:
        """``push_many`` for JSONL lines."""
        return self._run_batch(lines, offsets, self.validator.parse_line)

    def run_jsonl(self, path: str | Path, limit: int | None = None) -> int:
        """Process a JSONL file from the saved offset on (all of it on a new state), in
        batches of ``config.batch_size`` lines cut at commit points; returns the number of
        lines read. ``limit`` stops after that many lines."""
        source = f"jsonl:{Path(path).name}"
        if self.offset and self.source != source:
            raise StreamConfigError(f"[stream] the state holds the offset of source '{self.source}', "
                                    f"not of '{source}'; use a new --state file")
        self.source = source
        count = 0
        lines: list[bytes] = []
        offsets: list[int] = []
        room = self._batch_room()
        for line, offset in read_jsonl(path, self.offset):
            lines.append(line)
            offsets.append(offset)
            count += 1
            if len(lines) >= room or (limit is not None and count >= limit):
                self.push_lines(lines, offsets)
                lines, offsets = [], []
                room = self._batch_room()
                if limit is not None and count >= limit:
                    break
        if lines:
            self.push_lines(lines, offsets)
        return count

    def run_queue(self, events: Iterable[Any]) -> int:
        """Drain an iterable of events (e.g. a :class:`BoundedEventQueue`) until it ends.
        A :class:`BoundedEventQueue` is drained in batches of what is already waiting (up
        to ``config.batch_size``, cut at commit points), so an event never waits for
        later ones; other iterables are processed event by event."""
        count = 0
        if isinstance(events, BoundedEventQueue):
            while True:
                batch = events.get_batch(self._batch_room())
                if batch is None:
                    return count
                self.push_many(batch)
                count += len(batch)
        for raw in events:
            self.push(raw)
            count += 1
        return count

    def _batch_room(self) -> int:
        """Inputs the next batch may take: at most ``batch_size`` and never past a commit
        point, so commits (and evictions) land on exactly the inputs they would unbatched."""
        every = self.config.commit_every
        return min(self.config.batch_size, every - self.inputs % every)

    def _run_batch(self, raws: Sequence[Any], offsets: Sequence[int] | None,
                   parse: Callable[[Any], Event | None]) -> list[Fire]:
        """Validate, apply the late policy, match and deliver a batch of inputs.

        Exactly what the inputs would do one by one: validation and the late check run in
        input order (the watermark moves with every event); each partition field's matcher
        then takes the accepted events as one batch (keys never interact, so the native
        matcher's key-by-key order gives the event-by-event result); features are added
        and read per feature definition in event order, each value read right after the
        firing event was added (see :meth:`FeatureStore.add_and_read`); sinks are called
        in event order. Commits happen only between batches, and batches never straddle
        a commit point (``_batch_room``), so the durable state is the same too."""
        started = time.perf_counter()
        if not raws:
            return []
        if offsets is None:
            offsets = range(self.offset + 1, self.offset + 1 + len(raws))
        elif len(offsets) != len(raws):
            raise StreamConfigError(f"[stream] {len(offsets)} offsets for {len(raws)} events")
        if self._in_batch:
            raise StreamConfigError("[stream] events cannot be pushed from inside a sink (the engine is "
                                    "delivering a batch)")
        validator = self.validator
        drop_late = self.config.late_policy == "drop"
        lateness = self.config.allowed_lateness_ms
        events: list[Event] = []
        event_offsets: list[int] = []
        for raw, offset in zip(raws, offsets):
            event = parse(raw)
            if event is None:
                continue
            # max_ts already includes this event, as the watermark of its own check did
            if drop_late and event.ts < validator.max_ts - lateness:
                self.late_dropped += 1
                continue
            events.append(event)
            event_offsets.append(offset)
        fires: list[Fire] = []
        self._in_batch = len(raws)
        try:
            if events:
                fires = self._process(events, event_offsets, started)
        finally:
            self._in_batch = 0
            self.offset = offsets[-1]
            self.inputs += len(raws)
        # commit and eviction points depend only on the input count, so a resumed run
        # commits (and evicts) at exactly the same inputs as an uninterrupted one
        if self.inputs % self.config.commit_every == 0:
            self.commit()
        return fires
    @property
    def watermark(self) -> int:
        """Event time up to which the stream is considered complete."""
        return self.validator.max_ts - self.config.allowed_lateness_ms

    @property
    def horizon(self) -> int:
        """No accepted event will ever be older than this: state older is safe to evict."""
        if self.config.late_policy == "drop":
            return self.watermark
        return self.validator.max_ts - self.config.max_disorder_ms

    def _process(self, events: list[Event], offsets: list[int], started: float) -> list[Fire]:
        """Match a batch of accepted events, compute the fired tasks' features, call the sinks."""
        first_order = self.events
        self.events += len(events)
        keys_by_field: dict[str, list[str | None]] = {}
        # per event: [(field, triggers fired, sorted by name)] in the order of self.automata
        fired_at: dict[int, list[tuple[str, list[Trigger]]]] = {}
        for field, automaton in self.automata.items():
            if field == EVENT_KEY:
                keys: list[str | None] = [event.key for event in events]
            else:
                keys = [None if (value := event.attrs.get(field)) is None else str(value) for event in events]
            keys_by_field[field] = keys
            self._dirty_matches.update((field, key) for key in set(keys) if key is not None)
            for index, fired in automaton.process_batch(events, keys):
                fired_at.setdefault(index, []).append((field, fired))
        # the features each firing needs, read once per (definition, event): tasks often share them
        task_features = self._task_features
        reads: dict[str, dict[int, str]] = {}  # state id -> {event index: key}
        for index, per_field in fired_at.items():
            for field, fired in per_field:
                key = keys_by_field[field][index]
                for trigger in fired:
                    for _, sid in task_features[trigger.name]:
                        wanted = reads.get(sid)
                        if wanted is None:
                            reads[sid] = {index: key}
                        else:
                            wanted[index] = key
        values = self.features.add_and_read(events, first_order, keys_by_field, reads)
        fires: list[Fire] = []
        for index in sorted(fired_at):
            event, offset = events[index], offsets[index]
            batch: list[Fire] = []
            for field, fired in fired_at[index]:
                key = keys_by_field[field][index]
                for trigger in fired:
                    # lists are copied so no two firings share a mutable value
                    features = {name: (list(value) if type(value) is list else value)
                                for name, sid in task_features[trigger.name]
                                for value in (values[sid][index],)}
                    batch.append(Fire(trigger.name, key, features, event, offset))
            self._deliver(batch, started)
            fires += batch
        return fires

    def _deliver(self, fires: list[Fire], started: float) -> None:
        for fire in fires:
            self.fired[fire.task] += 1
            self.features_produced += len(fire.features)
            if self.config.record_fires and self.store is not None:
                self._pending_fires.append((fire.offset, fire.task, fire.key, fire.event.ts, fire.features))
            for sink in self.sinks:
                sink.on_fire(fire.task, fire.key, fire.features, fire.event)
        # from the batch's start (its inputs were read by then) to the last sink's return
        latency = time.perf_counter() - started
        if len(self.latencies) < _LATENCY_SAMPLES:
            self.latencies.append(latency)
        else:
            self.latencies[self._latency_at] = latency
            self._latency_at = (self._latency_at + 1) % _LATENCY_SAMPLES

    # -- state -------------------------------------------------------------------------

    def evict(self) -> None:
        """Drop partial matches and windows that no future event can use."""
        horizon = self.horizon
        for field, automaton in self.automata.items():
            for key in automaton.evict(horizon):
                self._dirty_matches.add((field, key))
        for sid, key in self.features.evict(horizon):
            self.features.dirty.add((sid, key))

    def commit(self) -> None:
        """Write changed state, counters, offset and recorded firings in one transaction."""
        bucket = self.inputs // self.config.evict_every
        if bucket != self._evict_bucket:
            self._evict_bucket = bucket
            self.evict()
        if self.store is None:
            self._dirty_matches.clear()
            self.features.dirty.clear()
            return
        matches: list[tuple[str, str, Any]] = []
        for field, key in self._dirty_matches:
            automaton = self.automata.get(field)
            if automaton is None:
                matches.append((field, key, None))
            elif isinstance(automaton, NativeAutomaton):
                text = automaton.dump_key_json(key)
                matches.append((field, key, None if text is None else RawJSON(text)))
            else:
                matches.append((field, key, automaton.dump_key(key)))
        windows = []
        for sid, key in self.features.dirty:
            feature = self.features.windows.get(sid)
            windows.append((sid, key, feature.dump(key) if feature else None))
        self.store.commit(self._meta(), matches, windows, self._pending_fires)
        self._dirty_matches.clear()
        self.features.dirty.clear()
        self._pending_fires = []

    def close(self) -> None:
        self.commit()
        if self.store is not None:
            self.store.close()
            self.store = None

    def _meta(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "source": self.source,
            "inputs": self.inputs,
            "evict_bucket": self._evict_bucket,
            "events": self.events,
            "late_dropped": self.late_dropped,
            "rejected": self.validator.rejected,
            "max_ts": self.validator.max_ts,
            "fired": self.fired,
            "features_produced": self.features_produced,
            "feature_skipped": {sid: w.skipped for sid, w in self.features.windows.items()},
            "automata": {field: automaton.dump_meta() for field, automaton in self.automata.items()},
        }

    def _open_state(self, path: Path) -> None:
        self.store = StateStore(path)
        meta = self.store.meta()
        if meta:
            self.offset = int(meta["offset"])
            self.source = meta["source"]
            self.inputs = int(meta["inputs"])
            self._evict_bucket = int(meta["evict_bucket"])
            self.events = int(meta["events"])
            self.late_dropped = int(meta["late_dropped"])
            self.validator.rejected = dict(meta["rejected"])
            self.validator.max_ts = int(meta["max_ts"])
            self.features_produced = int(meta["features_produced"])
            for name, count in meta["fired"].items():
                if name in self.fired:
                    self.fired[name] = int(count)
            for sid, skipped in meta["feature_skipped"].items():
                if sid in self.features.windows:
                    self.features.windows[sid].skipped = int(skipped)
            for field, data in meta["automata"].items():
                if field in self.automata:
                    self.automata[field].load_meta(data)
        for field, key, data in self.store.match_rows():
            automaton = self.automata.get(field)
            if automaton is not None:
                automaton.load_key(key, data)
        for sid, key, data in self.store.window_rows():
            feature = self.features.windows.get(sid)
            if feature is not None:
                feature.load(key, data)

    # -- reporting ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 4) if lat else None

        return {
            "events": self.events,
            "rejected": self.validator.rejected_total,
            "rejected_by_reason": dict(self.validator.rejected),
            "late_dropped": self.late_dropped,
            "offset": self.offset,
            "watermark": self.watermark,
            "tasks": {name: {"fired": count} for name, count in sorted(self.fired.items())},
            "features_produced": self.features_produced,
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99)},
            "partial_matches": sum(a.state_size() for a in self.automata.values()),
            "matchers": dict(self.matchers),
            "matcher_keys": sum(len(a.keys) for a in self.automata.values()),
            "window_keys": self.features.size(),
        }
