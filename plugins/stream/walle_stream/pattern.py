"""Trigger patterns: the ``[trigger]`` table of a ``task.toml`` and a Flink-CEP-like API.

Matching semantics (what the shared automaton and the test oracle both implement): a
trigger with elements ``e0 .. en-1`` fires on event ``j`` of a key's substream when there
are positions ``p0 < p1 < ... < p(n-1) = j`` in that substream such that

* event ``p_i`` satisfies element ``e_i`` (type, optional page, attrs and ``where``),
* for every *strict* element ``e_i`` (``next``), ``p_i = p(i-1) + 1``: no other event of
  the key in between; *relaxed* elements (``followed_by``) allow any events in between,
* ``clock(j) - clock(p0) <= within_ms``, where ``clock`` is the key's event-time clock
  (the largest ``ts`` seen so far for that key, so a slightly late event is matched in
  arrival order), and
* every ``p_i`` lies after the event on which the trigger last fired for this key
  (skip-past-last-event: matching restarts after a firing) and after the trigger was
  registered (a trigger added to a running stream does not see earlier events).

A trigger fires at most once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from walle_stream.errors import StreamConfigError

RELAXED = "relaxed"
STRICT = "strict"
CONTIGUITIES = (RELAXED, STRICT)

#: the key field meaning "the event's own ``key``"; any other name selects ``attrs[name]``
EVENT_KEY = "key"


@dataclass(frozen=True)
class Element:
    """One step of a pattern. ``contiguity`` says how it follows the previous element (it
    is ignored on the first one). ``attrs`` are equality conditions on ``event.attrs``;
    ``where`` is any predicate on the event."""

    label: str
    type: str
    page: str | None = None
    attrs: tuple[tuple[str, Any], ...] = ()
    where: Callable[[Any], bool] | None = field(default=None, compare=False)
    contiguity: str = RELAXED

    def edge_key(self) -> tuple[Any, ...]:
        """What two elements must share for the trie to merge them (the label is only a
        name, so it is left out; a ``where`` predicate is compared by identity)."""
        return (self.contiguity, self.type, self.page, self.attrs, id(self.where) if self.where else None)

    def signature(self) -> str:
        """A stable text form of :meth:`edge_key`, used to name trie nodes in saved state."""
        parts = [self.contiguity, self.type, self.page or ""]
        parts += [f"{k}={v!r}" for k, v in self.attrs]
        if self.where is not None:
            parts.append("where=" + getattr(self.where, "__module__", "?") + "." +
                         getattr(self.where, "__qualname__", type(self.where).__name__))
        return "|".join(parts)

    def accepts(self, event: Any) -> bool:
        """The full condition (type included); the automaton checks the type by lookup."""
        if event.type != self.type:
            return False
        return self.accepts_same_type(event)

    def accepts_same_type(self, event: Any) -> bool:
        if self.page is not None and event.page != self.page:
            return False
        for name, value in self.attrs:
            if event.attrs.get(name) != value:
                return False
        return self.where is None or bool(self.where(event))


def _element(label: str, contiguity: str, type: str, page: str | None, attrs: Mapping[str, Any] | None,
             where: Callable[[Any], bool] | None) -> Element:
    if not isinstance(type, str) or not type:
        raise StreamConfigError(f"[stream] pattern element '{label}': 'type' must be a non-empty string")
    if page is not None and not isinstance(page, str):
        raise StreamConfigError(f"[stream] pattern element '{label}': 'page' must be a string")
    for name, value in (attrs or {}).items():
        if not isinstance(value, (str, int, float, bool)):
            raise StreamConfigError(f"[stream] pattern element '{label}': attrs['{name}'] must be a str, int, "
                                    f"float or bool, got {type(value).__name__}")
    if where is not None and not callable(where):
        raise StreamConfigError(f"[stream] pattern element '{label}': 'where' must be callable")
    return Element(label, type, page, tuple(sorted((attrs or {}).items())), where, contiguity)


class Pattern:
    """An immutable sequence pattern in the spirit of Flink CEP::

        Pattern.begin("view", type="page_view", page="detail") \\
            .followed_by("cart", type="add_to_cart").next("buy", type="purchase").within(30_000)
    """

    def __init__(self, elements: tuple[Element, ...], within_ms: int | None = None) -> None:
        self.elements = elements
        self.within_ms = within_ms

    @classmethod
    def begin(cls, label: str, *, type: str, page: str | None = None, attrs: Mapping[str, Any] | None = None,
              where: Callable[[Any], bool] | None = None) -> Pattern:
        return cls((_element(label, RELAXED, type, page, attrs, where),))

    def followed_by(self, label: str, *, type: str, page: str | None = None,
                    attrs: Mapping[str, Any] | None = None, where: Callable[[Any], bool] | None = None) -> Pattern:
        """Relaxed contiguity: other events of the key may come in between."""
        return self._then(_element(label, RELAXED, type, page, attrs, where))

    def next(self, label: str, *, type: str, page: str | None = None, attrs: Mapping[str, Any] | None = None,
             where: Callable[[Any], bool] | None = None) -> Pattern:
        """Strict contiguity: the very next event of the key must match."""
        return self._then(_element(label, STRICT, type, page, attrs, where))

    def within(self, ms: int) -> Pattern:
        return Pattern(self.elements, ms)

    def _then(self, element: Element) -> Pattern:
        if any(e.label == element.label for e in self.elements):
            raise StreamConfigError(f"[stream] pattern element label '{element.label}' is used twice")
        return Pattern(self.elements + (element,), self.within_ms)

    def trigger(self, name: str, key: str = EVENT_KEY) -> Trigger:
        if self.within_ms is None:
            raise StreamConfigError(f"[stream] trigger '{name}': the pattern needs .within(ms)")
        return Trigger(name, self.elements, self.within_ms, key)


@dataclass(frozen=True)
class Trigger:
    """A named pattern. ``key`` names the partition field: ``"key"`` (or the engine's
    name for it, e.g. ``"user"``) is the event's own key, anything else ``attrs[key]``."""

    name: str
    elements: tuple[Element, ...]
    within_ms: int
    key: str = EVENT_KEY

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise StreamConfigError("[stream] a trigger needs a non-empty name")
        if not self.elements:
            raise StreamConfigError(f"[stream] trigger '{self.name}': empty sequence")
        if isinstance(self.within_ms, bool) or not isinstance(self.within_ms, int) or self.within_ms <= 0:
            raise StreamConfigError(f"[stream] trigger '{self.name}': 'within_ms' must be a positive integer")
        if not isinstance(self.key, str) or not self.key:
            raise StreamConfigError(f"[stream] trigger '{self.name}': 'key' must be a non-empty string")


_TRIGGER_FIELDS = {"sequence", "within_ms", "contiguity", "key", "features"}


def trigger_from_table(name: str, table: Mapping[str, Any], where: str = "[trigger]") -> Trigger:
    """The ``[trigger]`` table of a task.toml -> a :class:`Trigger`. ``where`` names the
    table in error messages (e.g. the file it came from)."""
    unknown = sorted(set(table) - _TRIGGER_FIELDS)
    if unknown:
        raise StreamConfigError(f"[stream] {where}: unknown field(s) {', '.join(unknown)}; "
                                f"expected {', '.join(sorted(_TRIGGER_FIELDS))}")
    sequence = table.get("sequence")
    if not isinstance(sequence, list) or not sequence or not all(isinstance(s, str) for s in sequence):
        raise StreamConfigError(f"[stream] {where}: 'sequence' must be a non-empty list of strings")
    contiguity = table.get("contiguity", RELAXED)
    if contiguity not in CONTIGUITIES:
        raise StreamConfigError(f"[stream] {where}: 'contiguity' must be one of {', '.join(CONTIGUITIES)}, "
                                f"got {contiguity!r}")
    if "within_ms" not in table:
        raise StreamConfigError(f"[stream] {where}: missing 'within_ms'")
    elements = []
    for index, spec in enumerate(sequence):
        type_, _, page = spec.partition(":")
        if not type_:
            raise StreamConfigError(f"[stream] {where}: sequence[{index}] {spec!r} has no event type")
        elements.append(Element(f"e{index}", type_, page or None, (), None, RELAXED if index == 0 else contiguity))
    try:
        return Trigger(name, tuple(elements), table["within_ms"], table.get("key", EVENT_KEY))
    except StreamConfigError as exc:
        raise StreamConfigError(f"{exc} (in {where})") from None
