"""One shared automaton for every trigger of a partition field.

The triggers' element sequences are merged into a trie: two triggers that start with
the same elements share those nodes. Per key the automaton keeps, for each trie node,
only the *best* partial match that reached it: the one with the latest start. That is
enough because a later start dominates an earlier one for every trigger below the node:
it stays inside every ``within_ms`` longer and it is never older than a trigger's last
firing when the earlier one is not. So the state of a key is bounded by the number of
trie nodes, and a partial match shared by many triggers is stored and advanced once.

Strict contiguity needs one more set: the nodes reached by the key's *previous* event
(``fresh``), since only those may be continued by a ``next`` element.

Per event the work is a dict lookup by event type at the root, plus one per active node
that waits for that type (``waiting`` indexes active nodes by the event types of their
relaxed children). Triggers that cannot match the event cost nothing, which is what
keeps the per-event cost flat as triggers are added. The exact semantics are in
:mod:`walle_stream.pattern`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from walle_stream.errors import StreamConfigError
from walle_stream.pattern import STRICT, Element, Trigger


class EdgeIndex:
    """The children of a node entered by one event type under one contiguity.

    Children are grouped by the *shape* of their condition (page or not, which attrs) and
    looked up by the event's values for that shape, so a node with a thousand children
    that each want a different ``sku`` costs one dict lookup per event, not a thousand
    checks. Only ``where`` predicates are called one by one."""

    __slots__ = ("children", "groups", "plain", "simple")

    def __init__(self) -> None:
        self.children: list[TrieNode] = []
        self.plain: list[TrieNode] = []
        self.groups: list[tuple[bool, tuple[str, ...], dict[tuple[Any, ...], list[TrieNode]]]] = []
        self.simple = True

    def add(self, child: TrieNode) -> None:
        """Index one more child (incrementally: a node may get thousands of children)."""
        self.children.append(child)
        element = child.element
        assert element is not None
        if element.page is None and not element.attrs:
            self.plain.append(child)
            self.simple = self.simple and child.where is None
            return
        has_page, names = element.page is not None, tuple(name for name, _ in element.attrs)
        values = ((element.page,) if has_page else ()) + tuple(v for _, v in element.attrs)
        for group_page, group_names, table in self.groups:
            if group_page == has_page and group_names == names:
                table.setdefault(values, []).append(child)
                break
        else:
            self.groups.append((has_page, names, {values: [child]}))
        self.simple = False

    def remove(self, child: TrieNode) -> bool:
        """Remove ``child``; True when the index is now empty."""
        self.children.remove(child)
        self._rebuild()
        return not self.children

    def _rebuild(self) -> None:
        plain: list[TrieNode] = []
        groups: dict[tuple[bool, tuple[str, ...]], dict[tuple[Any, ...], list[TrieNode]]] = {}
        for child in self.children:
            element = child.element
            assert element is not None
            if element.page is None and not element.attrs:
                plain.append(child)
                continue
            shape = (element.page is not None, tuple(name for name, _ in element.attrs))
            values = ((element.page,) if element.page is not None else ()) + tuple(v for _, v in element.attrs)
            groups.setdefault(shape, {}).setdefault(values, []).append(child)
        self.plain = plain
        self.groups = [(has_page, names, table) for (has_page, names), table in groups.items()]
        self.simple = not groups and all(child.where is None for child in plain)

    def match(self, event: Any) -> list[TrieNode]:
        """The children whose element accepts ``event`` (its type is already known to fit)."""
        if self.simple:
            return self.plain
        found = [child for child in self.plain if child.where is None or child.where(event)]
        attrs = event.attrs
        for has_page, names, table in self.groups:
            key = ((event.page,) if has_page else ()) + tuple(attrs.get(name) for name in names)
            try:
                hit = table.get(key)
            except TypeError:  # an unhashable attr value (a list) equals no scalar condition
                continue
            if hit:
                found.extend(child for child in hit if child.where is None or child.where(event))
        return found


class TrieNode:
    """A prefix of one or more triggers' sequences. ``relaxed``/``strict`` map an event
    type to the children entered by an event of that type under that contiguity."""

    __slots__ = (
        "alive",
        "children",
        "element",
        "max_within",
        "parent",
        "relaxed",
        "sig",
        "strict",
        "triggers",
        "where",
    )

    def __init__(self, sig: str, element: Element | None, parent: TrieNode | None) -> None:
        self.sig = sig
        self.element = element
        self.where: Callable[[Any], bool] | None = None if element is None else element.where
        self.parent = parent
        self.children: dict[tuple[Any, ...], TrieNode] = {}
        self.relaxed: dict[str, EdgeIndex] = {}
        self.strict: dict[str, EdgeIndex] = {}
        self.triggers: list[Trigger] = []
        self.max_within = 0
        self.alive = True


class KeyState:
    """Matching state of one key: its event-time clock, the best partial match per trie
    node (``active``: ``node -> (start ordinal, start clock)``), the matches ending at the
    key's previous event (``fresh``) and the ordinal of each trigger's last firing."""

    __slots__ = ("active", "clock", "fresh", "last_fire", "version", "waiting")

    def __init__(self, version: int) -> None:
        self.clock = -1
        self.active: dict[TrieNode, tuple[int, int]] = {}
        self.fresh: dict[TrieNode, tuple[int, int]] = {}
        self.waiting: dict[str, dict[TrieNode, None]] = {}
        self.version = version
        self.last_fire: dict[str, int] = {}


class TriggerAutomaton:
    """The shared matcher. ``process(key, event)`` returns the triggers that fire on the
    event, sorted by name; triggers can be added and removed between any two events
    without disturbing other triggers' partial matches."""

    def __init__(self, triggers: Iterable[Trigger] = ()) -> None:
        self.root = TrieNode("", None, None)
        self.triggers: dict[str, Trigger] = {}
        self.keys: dict[str, KeyState] = {}
        self.nodes: dict[str, TrieNode] = {}
        # bumped on every trie change; a key re-indexes its state lazily on its next event
        self.version = 0
        # every processed event gets the next ordinal; partial matches start at one, and a
        # trigger only uses matches that start after both its last firing and its addition
        self.ordinal = 0
        self.added_at: dict[str, int] = {}
        for trigger in triggers:
            self.add(trigger)

    # -- trigger set -------------------------------------------------------------------

    def add(self, trigger: Trigger) -> None:
        if trigger.name in self.triggers:
            raise StreamConfigError(f"[stream] trigger '{trigger.name}' is already registered")
        node = self.root
        for index, element in enumerate(trigger.elements):
            if index == 0 and element.contiguity == STRICT:
                # a first element has nothing to be contiguous with
                element = Element(element.label, element.type, element.page, element.attrs, element.where)
            key = element.edge_key()
            child = node.children.get(key)
            if child is None:
                child = self._new_child(node, element, key)
            node = child
        node.triggers.append(trigger)
        node.triggers.sort(key=lambda t: t.name)
        self.triggers[trigger.name] = trigger
        self.added_at[trigger.name] = self.ordinal
        # adding can only raise max_within: stop where it no longer changes (a full
        # recomputation per trigger would scan the root's children every time)
        while node is not None and node.max_within < trigger.within_ms:
            node.max_within = trigger.within_ms
            node = node.parent
        self.version += 1

    def remove(self, name: str) -> Trigger:
        trigger = self.triggers.pop(name, None)
        if trigger is None:
            raise StreamConfigError(f"[stream] no trigger named '{name}' is registered")
        del self.added_at[name]
        node = self._terminal(trigger)
        node.triggers = [t for t in node.triggers if t.name != name]
        while node is not self.root and not node.triggers and not node.children:
            parent = node.parent
            assert parent is not None and node.element is not None
            del parent.children[node.element.edge_key()]
            index = parent.strict if node.element.contiguity == STRICT else parent.relaxed
            if index[node.element.type].remove(node):
                del index[node.element.type]
            del self.nodes[node.sig]
            node.alive = False
            node = parent
        self._update_max_within(node)
        self.version += 1
        return trigger

    def _new_child(self, parent: TrieNode, element: Element, key: tuple[Any, ...]) -> TrieNode:
        sig = parent.sig + "/" + element.signature()
        # two different `where` predicates may share a qualified name; number them in
        # registration order so saved state still names each node uniquely
        base, n = sig, 1
        while sig in self.nodes:
            n += 1
            sig = f"{base}#{n}"
        child = TrieNode(sig, element, parent)
        parent.children[key] = child
        index = parent.strict if element.contiguity == STRICT else parent.relaxed
        index.setdefault(element.type, EdgeIndex()).add(child)
        self.nodes[sig] = child
        return child

    def _terminal(self, trigger: Trigger) -> TrieNode:
        node = self.root
        for index, element in enumerate(trigger.elements):
            if index == 0 and element.contiguity == STRICT:
                element = Element(element.label, element.type, element.page, element.attrs, element.where)
            node = node.children[element.edge_key()]
        return node

    @staticmethod
    def _update_max_within(node: TrieNode | None) -> None:
        """Recompute ``max_within`` from ``node`` up to the root: a partial match at a
        node is useful as long as the slowest trigger below it could still complete."""
        while node is not None:
            best = max((t.within_ms for t in node.triggers), default=0)
            for child in node.children.values():
                best = max(best, child.max_within)
            node.max_within = best
            node = node.parent

    # -- matching ----------------------------------------------------------------------

    def process(self, key: str, event: Any) -> list[Trigger]:
        """Advance ``key``'s partial matches by ``event``; return the triggers that fire."""
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = KeyState(self.version)
        elif ks.version != self.version:
            self._reindex(ks)
        self.ordinal += 1
        seq = self.ordinal
        # a conditional expression, not max(): this line runs once per event and per field
        clock = event.ts if event.ts > ks.clock else ks.clock  # noqa: FURB136
        ks.clock = clock
        etype = event.type

        # candidates: child node -> best (start ordinal, start clock) entering it on this event
        cands: dict[TrieNode, tuple[int, int]] = {}
        starters = self.root.relaxed.get(etype)
        if starters:
            start = (seq, clock)
            for child in starters.match(event):
                cands[child] = start
        waiting = ks.waiting.get(etype)
        if waiting:
            active = ks.active
            expired = None
            for node in waiting:
                state = active[node]
                if clock - state[1] > node.max_within:
                    expired = [node] if expired is None else expired + [node]
                    continue
                for child in node.relaxed[etype].match(event):
                    old = cands.get(child)
                    if old is None or state[0] > old[0]:
                        cands[child] = state
            if expired:
                for node in expired:
                    self._drop(ks, node)
        if ks.fresh:
            for node, state in ks.fresh.items():
                children = node.strict.get(etype)
                if children and clock - state[1] <= node.max_within:
                    for child in children.match(event):
                        old = cands.get(child)
                        if old is None or state[0] > old[0]:
                            cands[child] = state
            ks.fresh = {}
        if not cands:
            return []

        fired: list[Trigger] = []
        for child, state in cands.items():
            if child.triggers:
                last_fire = ks.last_fire
                for trigger in child.triggers:
                    name = trigger.name
                    if (clock - state[1] <= trigger.within_ms and state[0] > last_fire.get(name, 0)
                            and state[0] > self.added_at[name]):
                        last_fire[name] = seq
                        fired.append(trigger)
            if child.relaxed:
                old = ks.active.get(child)
                if old is None:
                    ks.active[child] = state
                    for etype_next in child.relaxed:
                        ks.waiting.setdefault(etype_next, {})[child] = None
                elif state[0] > old[0]:
                    ks.active[child] = state
            if child.strict:
                ks.fresh[child] = state
        if len(fired) > 1:
            fired.sort(key=lambda t: t.name)
        return fired

    def process_batch(self, events: Sequence[Any], keys: Sequence[str | None]) -> list[tuple[int, list[Trigger]]]:
        """``process`` over a batch, ``keys[i]`` partitioning ``events[i]`` (None: the event is
        not seen); returns ``(index, triggers sorted by name)`` for the events that fired."""
        process = self.process
        out = []
        for index, (key, event) in enumerate(zip(keys, events)):
            if key is not None:
                fired = process(key, event)
                if fired:
                    out.append((index, fired))
        return out

    def _drop(self, ks: KeyState, node: TrieNode) -> None:
        del ks.active[node]
        for etype in node.relaxed:
            waiting = ks.waiting.get(etype)
            if waiting is not None:
                waiting.pop(node, None)
                if not waiting:
                    del ks.waiting[etype]

    def _reindex(self, ks: KeyState) -> None:
        """Bring a key's state in line with the current trie: forget nodes that were
        removed and rebuild the by-type index (a node may have gained children)."""
        ks.active = {node: state for node, state in ks.active.items() if node.alive and node.relaxed}
        ks.fresh = {node: state for node, state in ks.fresh.items() if node.alive and node.strict}
        ks.waiting = {}
        for node in ks.active:
            for etype in node.relaxed:
                ks.waiting.setdefault(etype, {})[node] = None
        ks.last_fire = {name: seq for name, seq in ks.last_fire.items() if name in self.triggers}
        ks.version = self.version

    # -- bounded state -----------------------------------------------------------------

    def evict(self, horizon: int, keys: Iterable[str] | None = None) -> list[str]:
        """Drop partial matches that can no longer complete, given that no future event of
        any key will have a clock below ``horizon``; forget keys left without state.
        Returns every key whose state changed (forgotten ones included), so durable state
        can rewrite or delete them: a restart must not bring back what was evicted."""
        changed = []
        for key in list(self.keys if keys is None else keys):
            ks = self.keys.get(key)
            if ks is None:
                continue
            if ks.version != self.version:
                self._reindex(ks)
            before = len(ks.active) + len(ks.fresh)
            for node, state in list(ks.active.items()):
                if horizon - state[1] > node.max_within:
                    self._drop(ks, node)
            if ks.fresh:
                # the key's next event has a clock of at least `horizon`
                ks.fresh = {n: s for n, s in ks.fresh.items() if horizon - s[1] <= n.max_within}
            pruned = self._prune_last_fire(ks)
            if not ks.active and not ks.fresh and ks.clock < horizon:
                # nothing in flight and every future event is newer than the key's clock:
                # a new KeyState behaves identically (any future start is after any past
                # firing anyway)
                del self.keys[key]
                changed.append(key)
            elif pruned or len(ks.active) + len(ks.fresh) != before:
                changed.append(key)
        return changed

    @staticmethod
    def _prune_last_fire(ks: KeyState) -> bool:
        """Forget last firings older than every partial match of the key: a match can only
        complete from a start after them (every future start is later still), so the check
        ``start > last firing`` they stand for always passes, as it does for a trigger that
        never fired. Keeps a busy key's state from growing with every trigger it ever fired."""
        if not ks.last_fire:
            return False
        oldest = min(min((s[0] for s in ks.active.values()), default=0x7FFFFFFFFFFFFFFF),
                     min((s[0] for s in ks.fresh.values()), default=0x7FFFFFFFFFFFFFFF))
        kept = {name: seq for name, seq in ks.last_fire.items() if seq >= oldest}
        if len(kept) == len(ks.last_fire):
            return False
        ks.last_fire = kept
        return True

    # -- durable state -----------------------------------------------------------------

    def dump_key(self, key: str) -> dict[str, Any] | None:
        """A JSON-able snapshot of one key's state (None when the key has no state)."""
        ks = self.keys.get(key)
        if ks is None:
            return None
        if ks.version != self.version:
            self._reindex(ks)
        return {
            "clock": ks.clock,
            "active": [[node.sig, s[0], s[1]] for node, s in ks.active.items()],
            "fresh": [[node.sig, s[0], s[1]] for node, s in ks.fresh.items()],
            "last_fire": ks.last_fire,
        }

    def load_key(self, key: str, data: dict[str, Any]) -> None:
        """Restore a key from :meth:`dump_key`; nodes of triggers no longer registered
        are skipped."""
        ks = KeyState(self.version)
        ks.clock = int(data["clock"])
        for sig, start_seq, start_clock in data["active"]:
            node = self.nodes.get(sig)
            if node is not None and node.relaxed:
                ks.active[node] = (int(start_seq), int(start_clock))
                for etype in node.relaxed:
                    ks.waiting.setdefault(etype, {})[node] = None
        for sig, start_seq, start_clock in data["fresh"]:
            node = self.nodes.get(sig)
            if node is not None and node.strict:
                ks.fresh[node] = (int(start_seq), int(start_clock))
        ks.last_fire = {name: int(seq) for name, seq in data["last_fire"].items() if name in self.triggers}
        self.keys[key] = ks

    def dump_meta(self) -> dict[str, Any]:
        """The automaton-wide part of the durable state."""
        return {"ordinal": self.ordinal, "added_at": dict(self.added_at)}

    def load_meta(self, data: dict[str, Any]) -> None:
        """Restore :meth:`dump_meta`. Triggers registered now but not then count as added
        at the restored ordinal, so they do not use partial matches from before."""
        self.ordinal = int(data["ordinal"])
        saved = data["added_at"]
        self.added_at = {name: int(saved.get(name, self.ordinal)) for name in self.triggers}

    def state_size(self) -> int:
        """Number of stored partial matches (active + fresh) over all keys."""
        return sum(len(ks.active) + len(ks.fresh) for ks in self.keys.values())
