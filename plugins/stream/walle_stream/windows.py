"""Windowed features over keyed streams: tumbling, sliding, session and count windows.

A task declares the features it wants as inputs; when its trigger fires, each feature is
read for the firing event's key as the window that contains the firing event (the event
itself included):

* ``tumbling`` (``size_ms``): ``[k*size, (k+1)*size)`` around the event's ``ts``;
* ``sliding`` (``size_ms``, ``slide_ms``; size a multiple of slide): of the windows
  containing ``ts``, the one that started first, i.e. the last ``size_ms`` rounded to
  panes; state is kept per pane of ``slide_ms`` and merged on read;
* ``session`` (``gap_ms``): events of a key at most ``gap_ms`` apart form a session;
  an event outside the feature's filter reads the session still open at its time;
* ``count`` (``size``): the key's last ``size`` matching events, in arrival order.

Windows are kept until no future event can fall into them: the engine passes a
``horizon`` (no accepted event will be older than it), which is how state stays bounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from walle_stream.aggregations import AGGREGATIONS, Aggregation, make_aggregation
from walle_stream.errors import StreamConfigError

WINDOWS = ("tumbling", "sliding", "session", "count")
_EVENT_FIELDS = ("type", "ts", "key", "page")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: an aggregation of ``field`` over a window of a keyed stream,
    counting only events of ``types`` (all when empty) on ``page`` (any when None)."""

    name: str
    window: str
    agg: str
    field: str = ""
    size_ms: int = 0
    slide_ms: int = 0
    gap_ms: int = 0
    size: int = 0
    n: int = 0
    types: tuple[str, ...] = ()
    page: str | None = None
    key: str = "key"

    def __post_init__(self) -> None:
        where = f"[stream] feature '{self.name}'"
        if self.window not in WINDOWS:
            raise StreamConfigError(f"{where}: 'window' must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.agg not in AGGREGATIONS:
            raise StreamConfigError(f"{where}: 'agg' must be one of {', '.join(AGGREGATIONS)}, got {self.agg!r}")
        needs = {"tumbling": ("size_ms",), "sliding": ("size_ms", "slide_ms"), "session": ("gap_ms",),
                 "count": ("size",)}[self.window]
        for name in needs + (("n",) if self.agg == "last_n" else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise StreamConfigError(f"{where}: '{name}' must be a positive integer for "
                                        f"{self.window} windows / {self.agg}")
        if self.window == "sliding" and self.size_ms % self.slide_ms:
            raise StreamConfigError(f"{where}: 'size_ms' must be a multiple of 'slide_ms'")
        if self.agg != "count" and not self.field:
            raise StreamConfigError(f"{where}: 'field' is required for agg '{self.agg}'")
        if self.field and self.field not in _EVENT_FIELDS and not self.field.startswith("attrs."):
            raise StreamConfigError(f"{where}: 'field' must be one of {', '.join(_EVENT_FIELDS)} or "
                                    f"'attrs.<name>', got {self.field!r}")

    def state_id(self) -> str:
        """Identical definitions under different names (or tasks) share one state."""
        data = asdict(self)
        del data["name"]
        return json.dumps(data, sort_keys=True)

    @property
    def pane_ms(self) -> int:
        return self.slide_ms if self.window == "sliding" else self.size_ms


_FEATURE_FIELDS = {"window", "agg", "field", "size_ms", "slide_ms", "gap_ms", "size", "n", "types", "page"}


def feature_from_table(name: str, table: Mapping[str, Any], key: str, where: str) -> FeatureSpec:
    """One ``[trigger.features.<name>]`` table -> a :class:`FeatureSpec`."""
    unknown = sorted(set(table) - _FEATURE_FIELDS)
    if unknown:
        raise StreamConfigError(f"[stream] {where}: unknown field(s) {', '.join(unknown)}; "
                                f"expected {', '.join(sorted(_FEATURE_FIELDS))}")
    types = table.get("types", [])
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise StreamConfigError(f"[stream] {where}: 'types' must be a list of event types")
    if "window" not in table or "agg" not in table:
        raise StreamConfigError(f"[stream] {where}: 'window' and 'agg' are required")
    try:
        return FeatureSpec(name, table["window"], table["agg"], table.get("field", ""),
                           table.get("size_ms", 0), table.get("slide_ms", 0), table.get("gap_ms", 0),
                           table.get("size", 0), table.get("n", 0), tuple(types), table.get("page"), key)
    except StreamConfigError as exc:
        raise StreamConfigError(f"{exc} (in {where})") from None


def field_value(event: Any, name: str) -> Any:
    if name.startswith("attrs."):
        return event.attrs.get(name[6:])
    return getattr(event, name)


class FeatureWindows:
    """The windows of one feature definition for all keys."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.agg: Aggregation = make_aggregation(spec.agg, spec.n)
        self.types = frozenset(spec.types)
        # key -> panes {pane index: acc} | sessions [[start, end, acc], ...] | count [[order, value]]
        self.state: dict[str, Any] = {}
        self.skipped = 0  # events whose field was missing or not a number

    def accepts(self, event: Any) -> bool:
        return (not self.types or event.type in self.types) and (self.spec.page is None or event.page == self.spec.page)

    def add(self, key: str, event: Any, order: int) -> bool:
        """Add an event (already filtered by :meth:`accepts`); False if it was skipped."""
        spec = self.spec
        value = field_value(event, spec.field) if spec.field else None
        if spec.field and (value is None or (self.agg.needs_number and (
                isinstance(value, bool) or not isinstance(value, (int, float))))):
            self.skipped += 1
            return False
        window = spec.window
        if window == "count":
            items = self.state.setdefault(key, [])
            items.append([order, value])
            if len(items) > spec.size:
                del items[0]
        elif window == "session":
            self._add_session(key, event.ts, value, order)
        else:
            panes = self.state.setdefault(key, {})
            index = event.ts // spec.pane_ms
            acc = panes.get(index)
            panes[index] = self.agg.add(self.agg.new() if acc is None else acc, value, order)
        return True

    def _add_session(self, key: str, ts: int, value: Any, order: int) -> None:
        gap = self.spec.gap_ms
        sessions = self.state.setdefault(key, [])
        merged = [ts, ts, self.agg.add(self.agg.new(), value, order)]
        kept = []
        for session in sessions:
            # sessions are kept more than `gap` apart, so only those within `gap` of the
            # event itself can join it
            if session[0] - gap <= ts <= session[1] + gap:
                merged = [min(merged[0], session[0]), max(merged[1], session[1]), self.agg.merge(session[2], merged[2])]
            else:
                kept.append(session)
        kept.append(merged)
        kept.sort(key=lambda s: s[0])
        self.state[key] = kept

    def value(self, key: str, ts: int) -> Any:
        """The feature for ``key`` in the window that contains ``ts``."""
        spec, agg = self.spec, self.agg
        state = self.state.get(key)
        if state is None:
            return agg.result(agg.new())
        if spec.window == "count":
            # the window holds the last `size` accepted events in order: the two common
            # aggregations read it directly (same results as the fold below)
            if agg.name == "count":
                return len(state)
            if agg.name == "last_n":
                return [value for _, value in state[-spec.n:]]
            acc = agg.new()
            for order, value in state:
                acc = agg.add(acc, value, order)
            return agg.result(acc)
        if spec.window == "session":
            # the session the event is in, or still open at its time (filtered-out events)
            for start, end, acc in reversed(state):
                if start <= ts <= end + spec.gap_ms:
                    return agg.result(acc)
            return agg.result(agg.new())
        last = ts // spec.pane_ms
        panes_per_window = spec.size_ms // spec.pane_ms
        acc = agg.new()
        for index in range(last - panes_per_window + 1, last + 1):
            pane = state.get(index)
            if pane is not None:
                acc = agg.merge(acc, pane)
        return agg.result(acc)

    def evict(self, horizon: int, key: str) -> bool:
        """Drop windows no event at or after ``horizon`` can touch; True when the key has
        nothing left (count windows never expire by time)."""
        spec = self.spec
        state = self.state.get(key)
        if state is None:
            return True
        if spec.window == "session":
            state[:] = [s for s in state if s[1] + spec.gap_ms >= horizon]
        elif spec.window != "count":
            # pane k is read by events up to the end of the last window that contains it
            panes_per_window = spec.size_ms // spec.pane_ms
            for index in [i for i in state if (i + panes_per_window) * spec.pane_ms <= horizon]:
                del state[index]
        if not state:
            del self.state[key]
            return True
        return False

    def dump(self, key: str) -> Any:
        state = self.state.get(key)
        if state is None or self.spec.window in ("count", "session"):
            return state
        return [[index, acc] for index, acc in state.items()]

    def load(self, key: str, data: Any) -> None:
        if self.spec.window in ("count", "session"):
            self.state[key] = data
        else:
            self.state[key] = {int(index): acc for index, acc in data}


@dataclass
class FeatureStore:
    """All feature windows of the engine; definitions shared by several tasks are kept
    once. ``dirty`` collects (state id, key) pairs changed since the last commit."""

    windows: dict[str, FeatureWindows] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)

    def register(self, spec: FeatureSpec) -> str:
        sid = spec.state_id()
        if sid not in self.windows:
            self.windows[sid] = FeatureWindows(spec)
        return sid

    def unregister_unused(self, used: set[str]) -> None:
        for sid in [s for s in self.windows if s not in used]:
            del self.windows[sid]

    def add(self, event: Any, order: int, keys: Mapping[str, str | None]) -> None:
        """Add ``event`` to every window whose filter it passes; ``keys`` maps a partition
        field to the event's value of it (None: the event lacks the field)."""
        for sid, windows in self.windows.items():
            if windows.accepts(event):
                key = keys.get(windows.spec.key)
                if key is not None and windows.add(key, event, order):
                    self.dirty.add((sid, key))

    def value(self, sid: str, key: str, ts: int) -> Any:
        return self.windows[sid].value(key, ts)

    def add_and_read(self, events: Sequence[Any], first_order: int, keys: Mapping[str, Sequence[str | None]],
                     reads: Mapping[str, Mapping[int, str]]) -> dict[str, dict[int, Any]]:
        """``add`` for a batch of events (the i-th has order ``first_order + i`` and, per
        partition field, key ``keys[field][i]``), reading on the way the values asked for:
        ``reads[sid][i] = key`` yields ``out[sid][i]``, the value for ``key`` right after event
        i was added, as if read between events. Definitions are independent, so each is run
        over the whole batch in turn."""
        out: dict[str, dict[int, Any]] = {}
        dirty = self.dirty
        for sid, windows in self.windows.items():
            wanted = reads.get(sid, {})
            got: dict[int, Any] = {}
            field_keys = keys.get(windows.spec.key)
            accepts, add, value = windows.accepts, windows.add, windows.value
            for index, event in enumerate(events):
                key = None if field_keys is None else field_keys[index]
                if key is not None and accepts(event) and add(key, event, first_order + index):
                    dirty.add((sid, key))
                if index in wanted:
                    got[index] = value(wanted[index], event.ts)
            out[sid] = got
        return out

    def evict(self, horizon: int) -> list[tuple[str, str]]:
        """Evict expired windows of every key; returns the emptied (state id, key) pairs."""
        emptied = []
        for sid, windows in self.windows.items():
            for key in list(windows.state):
                if windows.evict(horizon, key):
                    emptied.append((sid, key))
                else:
                    self.dirty.add((sid, key))
        return emptied

    def size(self) -> int:
        return sum(len(w.state) for w in self.windows.values())
