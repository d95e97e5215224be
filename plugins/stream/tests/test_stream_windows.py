"""Feature windows against a naive recomputation from the raw events, with eviction."""

from __future__ import annotations

import random

import pytest

from walle_stream.errors import StreamConfigError
from walle_stream.events import Event
from walle_stream.windows import FeatureSpec, FeatureWindows, feature_from_table

SPECS = [
    FeatureSpec("tumble_count", "tumbling", "count", size_ms=50),
    FeatureSpec("tumble_sum", "tumbling", "sum", "attrs.price", size_ms=40, types=("buy", "view")),
    FeatureSpec("slide_mean", "sliding", "mean", "attrs.price", size_ms=60, slide_ms=20),
    FeatureSpec("slide_distinct", "sliding", "distinct", "page", size_ms=90, slide_ms=30),
    FeatureSpec("slide_last", "sliding", "last_n", "attrs.price", size_ms=40, slide_ms=10, n=3),
    FeatureSpec("session_count", "session", "count", gap_ms=15),
    FeatureSpec("session_last", "session", "last_n", "page", gap_ms=25, n=4, page="b"),
    FeatureSpec("count_sum", "count", "sum", "attrs.price", size=5),
    FeatureSpec("count_distinct", "count", "distinct", "type", size=4),
]


def naive_value(spec: FeatureSpec, history: list[tuple[int, Event]], ts: int):
    """Recompute the feature from every event of the key seen so far (order, event)."""
    rows = [(o, e) for o, e in history
            if (not spec.types or e.type in spec.types) and (spec.page is None or e.page == spec.page)]
    field = spec.field
    if field:
        rows = [(o, e) for o, e in rows if value_of(e, field) is not None]
    if spec.window == "count":
        rows = rows[-spec.size:]
    elif spec.window == "session":
        spans = []  # group by ts with gaps <= gap_ms
        for o, e in sorted(rows, key=lambda r: r[1].ts):
            if spans and e.ts - spans[-1][1] <= spec.gap_ms:
                spans[-1][1] = e.ts
                spans[-1][2].append((o, e))
            else:
                spans.append([e.ts, e.ts, [(o, e)]])
        chosen = [s for s in spans if s[0] <= ts <= s[1] + spec.gap_ms]
        rows = chosen[-1][2] if chosen else []
    else:
        pane = spec.slide_ms if spec.window == "sliding" else spec.size_ms
        last = ts // pane
        low, high = (last - spec.size_ms // pane + 1) * pane, (last + 1) * pane
        rows = [(o, e) for o, e in rows if low <= e.ts < high]
    rows.sort(key=lambda r: r[0])
    values = [value_of(e, field) for _, e in rows] if field else [None] * len(rows)
    if spec.agg == "count":
        return len(rows)
    if spec.agg == "sum":
        return float(sum(values))
    if spec.agg == "mean":
        return sum(values) / len(values) if values else None
    if spec.agg == "last_n":
        return values[-spec.n:]
    return len(set(values))


def value_of(event: Event, field: str):
    return event.attrs.get(field[6:]) if field.startswith("attrs.") else getattr(event, field)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("seed", range(3))
def test_windows_match_naive_recomputation_with_eviction(spec, seed):
    rng = random.Random(seed)
    windows = FeatureWindows(spec)
    history: dict[str, list] = {}
    lateness, max_ts, ts = 12, -1, 0
    for order in range(1500):
        ts += rng.randint(0, 5)
        event_ts = ts - rng.randint(0, 20) if rng.random() < 0.2 else ts
        # the engine's drop policy: nothing older than the watermark reaches the windows
        if event_ts < max_ts - lateness:
            continue
        max_ts = max(max_ts, event_ts)
        attrs = {"price": rng.randint(1, 9)} if rng.random() < 0.9 else {}
        event = Event(rng.choice(["view", "buy", "click"]), event_ts, f"k{rng.randrange(4)}",
                      rng.choice("abc"), attrs)
        history.setdefault(event.key, []).append((order, event))
        if windows.accepts(event):
            windows.add(event.key, event, order)
        got = windows.value(event.key, event.ts)
        want = naive_value(spec, history[event.key], event.ts)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (order, event)
        if order % 37 == 0:
            for key in list(windows.state):
                windows.evict(max_ts - lateness, key)
    if spec.window != "count":
        # far in the future every window is gone: state is bounded
        for key in list(windows.state):
            windows.evict(10**12, key)
        assert windows.state == {}


def test_dump_load_round_trip():
    spec = SPECS[2]
    windows = FeatureWindows(spec)
    for i in range(50):
        windows.add("k", Event("view", i * 7, "k", "a", {"price": i}), i)
    copy = FeatureWindows(spec)
    copy.load("k", windows.dump("k"))
    assert copy.value("k", 343) == windows.value("k", 343)


def test_non_numeric_values_are_skipped_and_counted():
    windows = FeatureWindows(FeatureSpec("s", "count", "sum", "attrs.price", size=3))
    assert not windows.add("k", Event("view", 0, "k", "", {"price": "cheap"}), 0)
    assert windows.add("k", Event("view", 1, "k", "", {"price": 2}), 1)
    assert windows.skipped == 1 and windows.value("k", 1) == 2.0


@pytest.mark.parametrize("table, field", [
    ({"window": "hopping", "agg": "count"}, "window"),
    ({"window": "tumbling", "agg": "median", "size_ms": 5}, "agg"),
    ({"window": "tumbling", "agg": "count"}, "size_ms"),
    ({"window": "sliding", "agg": "count", "size_ms": 50, "slide_ms": 20}, "multiple"),
    ({"window": "count", "agg": "sum", "size": 3}, "field"),
    ({"window": "count", "agg": "last_n", "size": 3, "field": "page"}, "'n'"),
    ({"window": "count", "agg": "sum", "size": 3, "field": "price"}, "attrs"),
    ({"window": "count", "agg": "count", "size": 3, "colour": 1}, "colour"),
])
def test_bad_feature_tables_name_the_field(table, field):
    with pytest.raises(StreamConfigError, match=field):
        feature_from_table("f", table, "key", "task.toml [trigger.features.f]")
