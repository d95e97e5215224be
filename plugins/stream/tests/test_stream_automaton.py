"""The shared automaton against the naive oracle, on random streams and trigger sets."""

from __future__ import annotations

import random

import pytest
from oracle import OracleMatcher

from walle_stream.automaton import TriggerAutomaton
from walle_stream.errors import StreamConfigError
from walle_stream.events import Event
from walle_stream.pattern import Pattern, Trigger, trigger_from_table

TYPES = ["a", "b", "c", "d"]
PAGES = ["home", "detail"]


def even_ts(event) -> bool:
    return event.ts % 2 == 0


def random_trigger(rng: random.Random, name: str) -> Trigger:
    length = rng.randint(1, 4)
    pattern = None
    for i in range(length):
        kwargs = {"type": rng.choice(TYPES)}
        if rng.random() < 0.3:
            kwargs["page"] = rng.choice(PAGES)
        if rng.random() < 0.15:
            kwargs["attrs"] = {"v": rng.randint(0, 1)}
        if rng.random() < 0.1:
            kwargs["where"] = even_ts
        if pattern is None:
            pattern = Pattern.begin(f"e{i}", **kwargs)
        elif rng.random() < 0.35:
            pattern = pattern.next(f"e{i}", **kwargs)
        else:
            pattern = pattern.followed_by(f"e{i}", **kwargs)
    return pattern.within(rng.choice([5, 20, 60, 1000])).trigger(name)


def random_events(rng: random.Random, n: int, keys: int = 3) -> list[Event]:
    ts, events = 0, []
    for _ in range(n):
        ts += rng.randint(0, 6)
        # a few slightly late events exercise the per-key clock
        event_ts = max(0, ts - rng.randint(0, 8)) if rng.random() < 0.1 else ts
        events.append(Event(rng.choice(TYPES), event_ts, f"k{rng.randrange(keys)}", rng.choice(PAGES),
                            {"v": rng.randint(0, 1)}))
    return events


def run_both(triggers, events, automaton=None):
    automaton = automaton or TriggerAutomaton(triggers)
    oracle = OracleMatcher(triggers)
    for index, event in enumerate(events):
        got = [t.name for t in automaton.process(event.key, event)]
        want = oracle.process(event.key, event)
        assert got == want, f"event {index} {event}: automaton {got}, oracle {want}"
    return automaton


@pytest.mark.parametrize("seed", range(12))
def test_random_triggers_match_oracle(seed):
    rng = random.Random(seed)
    triggers = [random_trigger(rng, f"t{i}") for i in range(rng.randint(1, 25))]
    run_both(triggers, random_events(rng, 400))


def test_fires_on_completing_event_and_restarts_after_it():
    trig = Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab")
    auto = TriggerAutomaton([trig])
    stream = [("a", 0), ("a", 1), ("b", 2), ("b", 3), ("a", 4), ("c", 5), ("b", 6)]
    fired = [bool(auto.process("u", Event(t, ts, "u"))) for t, ts in stream]
    # the second b has no unused a before it: a firing consumes everything up to it
    assert fired == [False, False, True, False, False, False, True]


def test_strict_and_window():
    strict = Pattern.begin("x", type="a").next("y", type="b").within(10).trigger("strict")
    auto = TriggerAutomaton([strict])
    assert [bool(auto.process("u", Event(t, ts, "u"))) for t, ts in [("a", 0), ("c", 1), ("b", 2)]] == [0, 0, 0]
    assert [bool(auto.process("u", Event(t, ts, "u"))) for t, ts in [("a", 3), ("b", 14)]] == [0, 0]
    assert [bool(auto.process("u", Event(t, ts, "u"))) for t, ts in [("a", 20), ("b", 30)]] == [0, 1]


def test_keys_are_independent():
    trig = Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab")
    auto = TriggerAutomaton([trig])
    assert not auto.process("u1", Event("a", 0, "u1"))
    assert not auto.process("u2", Event("b", 1, "u2"))
    assert auto.process("u1", Event("b", 2, "u1"))


def test_add_and_remove_while_running_keeps_others_in_flight():
    rng = random.Random(7)
    triggers = [random_trigger(rng, f"t{i}") for i in range(15)]
    events = random_events(rng, 900)
    auto = TriggerAutomaton(triggers[:10])
    oracle = OracleMatcher(triggers[:10])
    for index, event in enumerate(events):
        if index == 300:
            # new triggers only see events from now on, even where they share trie nodes
            # (and so partial matches) with the triggers already running
            for trig in triggers[10:]:
                auto.add(trig)
                oracle.add(trig)
        if index == 600:
            for name in ("t0", "t3", "t12"):
                auto.remove(name)
                oracle.remove(name)
        got = [t.name for t in auto.process(event.key, event)]
        assert got == oracle.process(event.key, event), f"event {index}"


def test_shared_prefixes_share_nodes():
    a = Pattern.begin("x", type="a").followed_by("y", type="b").within(10).trigger("t1")
    b = Pattern.begin("x", type="a").followed_by("y", type="b").followed_by("z", type="c").within(10).trigger("t2")
    auto = TriggerAutomaton([a, b])
    assert len(auto.nodes) == 3
    auto.remove("t2")
    assert len(auto.nodes) == 2


def test_dump_and_load_round_trip_matches_uninterrupted_run():
    rng = random.Random(3)
    triggers = [random_trigger(rng, f"t{i}") for i in range(20)]
    events = random_events(rng, 600)
    reference = TriggerAutomaton(triggers)
    expected = [[t.name for t in reference.process(e.key, e)] for e in events]
    auto = TriggerAutomaton(triggers)
    got = []
    for index, event in enumerate(events):
        if index % 97 == 0:
            dumped = {key: auto.dump_key(key) for key in list(auto.keys)}
            meta = auto.dump_meta()
            auto = TriggerAutomaton(triggers)
            auto.load_meta(meta)
            for key, data in dumped.items():
                auto.load_key(key, data)
        got.append([t.name for t in auto.process(event.key, event)])
    assert got == expected


def test_evict_keeps_results_and_bounds_state():
    rng = random.Random(11)
    triggers = [random_trigger(rng, f"t{i}") for i in range(20)]
    events = sorted(random_events(rng, 800, keys=30), key=lambda e: e.ts)
    auto = TriggerAutomaton(triggers)
    oracle = OracleMatcher(triggers)
    for index, event in enumerate(events):
        assert [t.name for t in auto.process(event.key, event)] == oracle.process(event.key, event)
        if index % 50 == 0:
            auto.evict(event.ts)
    auto.evict(events[-1].ts + 10_000)
    assert auto.keys == {}


def test_toml_trigger_table():
    trig = trigger_from_table("buy", {"sequence": ["page_view:detail", "add_to_cart", "purchase"],
                                      "within_ms": 30000, "contiguity": "strict", "key": "user"})
    assert [(e.type, e.page, e.contiguity) for e in trig.elements] == [
        ("page_view", "detail", "relaxed"), ("add_to_cart", None, "strict"), ("purchase", None, "strict")]
    assert trig.key == "user"


@pytest.mark.parametrize("table, field", [
    ({"sequence": [], "within_ms": 5}, "sequence"),
    ({"sequence": ["a"], "within_ms": 0}, "within_ms"),
    ({"sequence": ["a"]}, "within_ms"),
    ({"sequence": ["a"], "within_ms": 5, "contiguity": "loose"}, "contiguity"),
    ({"sequence": ["a"], "within_ms": 5, "bogus": 1}, "bogus"),
    ({"sequence": [":x"], "within_ms": 5}, "sequence"),
])
def test_bad_trigger_tables_name_the_field(table, field):
    with pytest.raises(StreamConfigError, match=field):
        trigger_from_table("t", table)


def test_duplicate_and_unknown_trigger_names():
    trig = Pattern.begin("x", type="a").within(5).trigger("t")
    auto = TriggerAutomaton([trig])
    with pytest.raises(StreamConfigError, match="already registered"):
        auto.add(trig)
    with pytest.raises(StreamConfigError, match="no trigger named 'nope'"):
        auto.remove("nope")
    with pytest.raises(StreamConfigError, match="used twice"):
        Pattern.begin("x", type="a").followed_by("x", type="b")
    with pytest.raises(StreamConfigError, match="within"):
        Pattern.begin("x", type="a").trigger("t")


def test_evict_reports_keys_that_lost_a_partial_match():
    """A key that keeps other state but lost an expired match must be rewritten in durable
    state, or a restart would bring the expired match back."""
    short = Pattern.begin("a", type="a").followed_by("b", type="b").within(10).trigger("short")
    long = Pattern.begin("c", type="c").followed_by("d", type="d").within(1000).trigger("long")
    auto = TriggerAutomaton([short, long])
    auto.process("u", Event("a", 0, "u"))
    auto.process("u", Event("c", 5, "u"))
    before = auto.dump_key("u")
    assert len(before["active"]) == 2
    assert auto.evict(horizon=100) == ["u"]
    after = auto.dump_key("u")
    assert [sig for sig, _, _ in after["active"]] == [sig for sig, _, _ in before["active"] if "|c" in sig]
    assert auto.evict(horizon=101) == []  # nothing more to drop: no rewrite needed
