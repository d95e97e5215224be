"""The native shared matcher behind the :class:`~walle_stream.automaton.TriggerAutomaton` interface.

:class:`NativeAutomaton` keeps the trie's *structure* in a Python ``TriggerAutomaton`` (so node
signatures, hence saved state, are exactly the Python automaton's) and mirrors it into the C++
matcher of ``walle_stream._ext``, which holds every key's partial matches and does the
matching. Names are interned here: event types, pages and attribute values become dense ids
(-1 for anything no condition names: it satisfies no condition), attribute names that appear
in conditions become the columns of a per-event value table, keys become slot ids.

Two ways in:

* ``process(key, event)``: one event, the same call as the Python automaton (what the engine
  uses, since features are read between events);
* ``encode(events)`` once, then ``process_encoded(batch)``: whole NumPy batches, matched
  without the GIL; the hot path for bulk matching and the benchmark.

Triggers with ``where`` predicates (arbitrary Python callables) cannot run natively:
:func:`unsupported_reason` says why, and the engine keeps such partition fields on the Python
automaton. The semantics are those of :mod:`walle_stream.pattern`; the saved state
(:meth:`dump_key`, :meth:`dump_meta`) has the Python automaton's format, so either can load
what the other saved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from walle_stream.automaton import TrieNode, TriggerAutomaton
from walle_stream.errors import StreamConfigError
from walle_stream.events import MAX_TS
from walle_stream.pattern import STRICT, Element, Trigger

try:
    from walle_stream import _ext
except ImportError:  # a source tree without the built extension: the Python automaton serves
    _ext = None


def native_available() -> bool:
    """True when the extension module was built and imports."""
    return _ext is not None


def unsupported_reason(trigger: Trigger) -> str | None:
    """Why ``trigger`` cannot run on the native matcher, or None when it can."""
    if trigger.within_ms >= MAX_TS:
        return f"trigger '{trigger.name}': within_ms {trigger.within_ms} is beyond the native clock range"
    for element in trigger.elements:
        if element.where is not None:
            return f"trigger '{trigger.name}': element '{element.label}' has a 'where' predicate"
        for name, value in element.attrs:
            if isinstance(value, float) and math.isnan(value):
                return f"trigger '{trigger.name}': element '{element.label}' compares attrs['{name}'] with NaN"
    return None


def _label(name: str) -> tuple[bytes, str]:
    """A node signature or trigger name for the native JSON dump: its UTF-8 bytes order the
    entries as Python orders str (code points; surrogates kept), and the JSON literal is
    what ``json.dumps`` writes for it."""
    return name.encode("utf-8", "surrogatepass"), json.dumps(name)


@dataclass(frozen=True)
class EncodedEvents:
    """A batch of events as ids, valid for the matcher (and vocabulary) that encoded it."""

    keys: np.ndarray  # int32 [n]
    ts: np.ndarray  # int64 [n]
    types: np.ndarray  # int32 [n]
    pages: np.ndarray  # int32 [n]
    vals: np.ndarray  # int32 [n, attribute columns]
    stamp: tuple[int, ...]  # vocabulary sizes and key epoch at encoding

    def __len__(self) -> int:
        return int(self.keys.shape[0])


class NativeAutomaton:
    """The shared matcher in C++; same interface and results as ``TriggerAutomaton``."""

    def __init__(self, triggers: Iterable[Trigger] = ()) -> None:
        if _ext is None:
            raise StreamConfigError("[stream] the native matcher is not built (walle_stream._ext is missing)")
        self._m = _ext.Matcher()
        self._trie = TriggerAutomaton()  # structure and node signatures only; never matches
        self._node_ids: dict[TrieNode, int] = {self._trie.root: 0}
        self._sig_ids: dict[str, int] = {}
        self._node_sigs: dict[int, str] = {}
        self._trigger_ids: dict[str, int] = {}
        self._by_id: dict[int, Trigger] = {}
        self._types: dict[str, int] = {}
        self._pages: dict[str, int] = {}
        self._values: dict[Any, int] = {}
        self._cols: dict[str, int] = {}
        self._col_names: tuple[str, ...] = ()
        self.keys: dict[str, int] = {}  # keys holding state -> slot id
        self._key_names: list[str | None] = []
        self._free_keys: list[int] = []
        self._key_capacity = 0
        self._key_epoch = 0
        for trigger in triggers:
            self.add(trigger)

    # -- trigger set -------------------------------------------------------------------

    @property
    def triggers(self) -> dict[str, Trigger]:
        return self._trie.triggers

    @property
    def nodes(self) -> dict[str, TrieNode]:
        return self._trie.nodes

    def _path(self, trigger: Trigger) -> list[tuple[TrieNode, Element]]:
        """The trie nodes of a registered trigger's elements, root excluded, with the element
        as the trie stores it (a first element is never strict)."""
        path, node = [], self._trie.root
        for index, element in enumerate(trigger.elements):
            if index == 0 and element.contiguity == STRICT:
                element = Element(element.label, element.type, element.page, element.attrs, element.where)
            node = node.children[element.edge_key()]
            path.append((node, element))
        return path

    def add(self, trigger: Trigger) -> None:
        reason = unsupported_reason(trigger)
        if reason is not None:
            raise StreamConfigError(f"[stream] the native matcher cannot run {reason}")
        self._trie.add(trigger)
        for node, element in self._path(trigger):
            if node not in self._node_ids:
                assert node.parent is not None
                node_id = self._m.add_node(self._node_ids[node.parent], element.contiguity == STRICT,
                                           self._pred(element))
                self._node_ids[node] = node_id
                self._sig_ids[node.sig] = node_id
                self._node_sigs[node_id] = node.sig
                self._m.set_node_label(node_id, *_label(node.sig))
        tid = self._m.add_trigger(self._node_ids[node], trigger.within_ms)
        self._m.set_trigger_label(tid, *_label(trigger.name))
        self._trigger_ids[trigger.name] = tid
        self._by_id[tid] = trigger

    def remove(self, name: str) -> Trigger:
        trigger = self._trie.triggers.get(name)
        if trigger is None:
            raise StreamConfigError(f"[stream] no trigger named '{name}' is registered")
        path = [node for node, _ in self._path(trigger)]
        self._trie.remove(name)
        tid = self._trigger_ids.pop(name)
        del self._by_id[tid]
        self._m.remove_trigger(tid)
        for node in reversed(path):  # leaves first: a node goes once it has no children
            if not node.alive:
                node_id = self._node_ids.pop(node)
                del self._sig_ids[node.sig], self._node_sigs[node_id]
                self._m.remove_node(node_id)
        return trigger

    def _intern(self, table: dict[Any, int], value: Any) -> int:
        index = table.get(value)
        if index is None:
            index = table[value] = len(table)
        return index

    def _pred(self, element: Element) -> int:
        type_id = self._intern(self._types, element.type)
        page_id = -1 if element.page is None else self._intern(self._pages, element.page)
        conditions = sorted((self._intern(self._cols, name), self._intern(self._values, value))
                            for name, value in element.attrs)
        self._col_names = tuple(self._cols)
        self._m.set_vocab(len(self._types), len(self._pages), len(self._values), len(self._cols))
        return self._m.add_pred(type_id, page_id, [c for c, _ in conditions], [v for _, v in conditions])

    # -- keys --------------------------------------------------------------------------

    def _key_id(self, key: str) -> int:
        kid = self.keys.get(key)
        if kid is None:
            if self._free_keys:
                kid = self._free_keys.pop()
                self._key_names[kid] = key
            else:
                kid = len(self._key_names)
                self._key_names.append(key)
                if kid >= self._key_capacity:
                    self._key_capacity = max(1024, 2 * self._key_capacity)
                    self._m.resize_keys(self._key_capacity)
            self.keys[key] = kid
        return kid

    def _forget(self, kid: int) -> None:
        name = self._key_names[kid]
        assert name is not None
        del self.keys[name]
        self._key_names[kid] = None
        self._free_keys.append(kid)
        self._key_epoch += 1

    # -- matching ----------------------------------------------------------------------

    def _value_id(self, value: Any) -> int:
        try:
            return self._values.get(value, -1)
        except TypeError:  # an unhashable attr value (a list) equals no scalar condition
            return -1

    def process(self, key: str, event: Any) -> list[Trigger]:
        """Advance ``key``'s partial matches by ``event``; return the triggers that fire,
        sorted by name."""
        attrs = event.attrs
        vals = [self._value_id(attrs.get(name)) for name in self._col_names] if self._col_names else []
        ids = self._m.process_one(self._key_id(key), event.ts, self._types.get(event.type, -1),
                                  self._pages.get(event.page, -1), vals)
        if not ids:
            return []
        fired = [self._by_id[i] for i in ids]
        if len(fired) > 1:
            fired.sort(key=lambda t: t.name)
        return fired

    def _stamp(self) -> tuple[int, ...]:
        return len(self._types), len(self._pages), len(self._values), len(self._cols), self._key_epoch

    def encode(self, events: Sequence[Any], keys: Sequence[str] | None = None) -> EncodedEvents:
        """Intern a batch (``keys[i]`` partitions ``events[i]``; default ``event.key``). The
        batch stays valid until a trigger adds vocabulary or an eviction frees key slots."""
        if keys is not None and len(keys) != len(events):
            raise StreamConfigError(f"[stream] encode: {len(keys)} keys for {len(events)} events")
        n, cols = len(events), self._col_names
        key_ids = np.empty(n, np.int32)
        ts = np.empty(n, np.int64)
        types = np.empty(n, np.int32)
        pages = np.empty(n, np.int32)
        vals = np.full((n, len(cols)), -1, np.int32)
        type_get, page_get, value_id, key_id = self._types.get, self._pages.get, self._value_id, self._key_id
        for i, event in enumerate(events):
            key_ids[i] = key_id(event.key if keys is None else keys[i])
            ts[i] = event.ts
            types[i] = type_get(event.type, -1)
            pages[i] = page_get(event.page, -1)
            if cols:
                attrs = event.attrs
                vals[i] = [value_id(attrs.get(name)) for name in cols]
        return EncodedEvents(key_ids, ts, types, pages, vals, self._stamp())

    def process_encoded(self, batch: EncodedEvents) -> tuple[np.ndarray, np.ndarray]:
        """Match a whole batch natively; returns ``(event index, trigger id)`` arrays of the
        firings in event order (:meth:`trigger_of` names an id)."""
        if batch.stamp != self._stamp():
            raise StreamConfigError("[stream] process_encoded: the batch was encoded before the trigger set or "
                                    "the key slots changed; encode it again")
        return self._m.process(batch.keys, batch.ts, batch.types, batch.pages, batch.vals)

    def process_batch(self, events: Sequence[Any], keys: Sequence[str | None]) -> list[tuple[int, list[Trigger]]]:
        """``process`` over a batch in one native call, ``keys[i]`` partitioning ``events[i]``
        (None: the event is not seen); returns ``(index, triggers sorted by name)`` for the
        events that fired, in event order."""
        if len(events) == 1:
            fired = self.process(keys[0], events[0]) if keys[0] is not None else []
            return [(0, fired)] if fired else []
        if any(key is None for key in keys):
            seen = [index for index, key in enumerate(keys) if key is not None]
            sub = self.process_batch([events[i] for i in seen], [keys[i] for i in seen])
            return [(seen[index], fired) for index, fired in sub]
        event_index, trigger_ids = self.process_encoded(self.encode(events, keys))
        out: list[tuple[int, list[Trigger]]] = []
        by_id = self._by_id
        last = -1
        for index, tid in zip(event_index.tolist(), trigger_ids.tolist()):
            if index != last:
                out.append((index, [by_id[tid]]))
                last = index
            else:
                out[-1][1].append(by_id[tid])
        for _, fired in out:
            if len(fired) > 1:
                fired.sort(key=lambda t: t.name)
        return out

    def trigger_of(self, trigger_id: int) -> Trigger:
        return self._by_id[int(trigger_id)]

    def process_many(self, events: Sequence[Any], keys: Sequence[str] | None = None) -> list[list[Trigger]]:
        """``process`` over a batch: per event the triggers that fire, sorted by name."""
        event_index, trigger_ids = self.process_encoded(self.encode(events, keys))
        out: list[list[Trigger]] = [[] for _ in events]
        for i, tid in zip(event_index.tolist(), trigger_ids.tolist()):
            out[i].append(self._by_id[tid])
        for fired in out:
            if len(fired) > 1:
                fired.sort(key=lambda t: t.name)
        return out

    # -- bounded state -----------------------------------------------------------------

    def evict(self, horizon: int, keys: Iterable[str] | None = None) -> list[str]:
        """Same contract as ``TriggerAutomaton.evict``: returns every key whose state changed,
        forgotten ones included."""
        only = None if keys is None else [self.keys[k] for k in keys if k in self.keys]
        changed = []
        for kid, forgotten in self._m.evict(horizon, only):
            name = self._key_names[kid]
            assert name is not None
            changed.append(name)
            if forgotten:
                self._forget(kid)
        return changed

    # -- durable state -----------------------------------------------------------------

    def dump_key(self, key: str) -> dict[str, Any] | None:
        """The Python automaton's snapshot format, entries sorted by node signature."""
        kid = self.keys.get(key)
        if kid is None:
            return None
        dumped = self._m.dump_key(kid)
        if dumped is None:
            return None
        clock, active, fresh, last_fire = dumped
        sigs = self._node_sigs
        return {
            "clock": clock,
            "active": sorted([sigs[node], seq, start] for node, seq, start in active),
            "fresh": sorted([sigs[node], seq, start] for node, seq, start in fresh),
            "last_fire": dict(sorted((self._by_id[t].name, seq) for t, seq in last_fire)),
        }

    def dump_key_json(self, key: str) -> str | None:
        """``dump_key`` as compact JSON text (``json.dumps(..., separators=(",", ":"))``),
        built natively: what a commit writes, without the Python objects in between."""
        kid = self.keys.get(key)
        return None if kid is None else self._m.dump_key_json(kid)

    def load_key(self, key: str, data: dict[str, Any]) -> None:
        """Restore a key from ``dump_key`` (of either automaton); nodes and triggers no longer
        registered are skipped."""
        sig_ids, trigger_ids = self._sig_ids, self._trigger_ids
        active = [(sig_ids[sig], int(seq), int(clock)) for sig, seq, clock in data["active"] if sig in sig_ids]
        fresh = [(sig_ids[sig], int(seq), int(clock)) for sig, seq, clock in data["fresh"] if sig in sig_ids]
        last_fire = [(trigger_ids[name], int(seq)) for name, seq in data["last_fire"].items() if name in trigger_ids]
        self._m.load_key(self._key_id(key), int(data["clock"]), active, fresh, last_fire)

    def dump_meta(self) -> dict[str, Any]:
        return {"ordinal": self._m.ordinal,
                "added_at": {name: self._m.added_at(tid) for name, tid in self._trigger_ids.items()}}

    def load_meta(self, data: dict[str, Any]) -> None:
        """Triggers registered now but not then count as added at the restored ordinal."""
        self._m.ordinal = int(data["ordinal"])
        saved = data["added_at"]
        for name, tid in self._trigger_ids.items():
            self._m.set_added_at(tid, int(saved.get(name, data["ordinal"])))

    def counters(self, reset: bool = False) -> dict[str, int]:
        """What matching did since the last reset: ``events``, waiting entries ``scanned``,
        partial-match ``advances`` (a match offered to a child node), nodes ``entered``,
        trigger ``checks`` and ``fires``: the cost structure behind the throughput."""
        out = self._m.counters()
        if reset:
            self._m.reset_counters()
        return out

    def state_size(self) -> int:
        """Number of stored partial matches (active + fresh) over all keys."""
        return int(self._m.state_size())


def copy_state(source: Any, target: Any) -> None:
    """Move every key's partial matches and the automaton-wide counters from one automaton
    to another (Python <-> native); both must hold the same triggers, or ``target`` more."""
    target.load_meta(source.dump_meta())
    for key in list(source.keys):
        data = source.dump_key(key)
        if data is not None:
            target.load_key(key, data)
