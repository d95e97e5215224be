"""The native matcher against the naive oracle and the Python automaton: random trigger sets
and streams, hot add/remove, state round trips (native <-> Python), eviction, the engine's
choice of matcher, and bad input."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from oracle import OracleMatcher
from test_stream_automaton import PAGES, TYPES, random_events

from walle_stream import EngineConfig, Event, ListSink, Pattern, StreamEngine
from walle_stream.automaton import TriggerAutomaton
from walle_stream.bench import random_triggers
from walle_stream.errors import StreamConfigError
from walle_stream.gen import generate_events
from walle_stream.native import NativeAutomaton, copy_state, native_available, unsupported_reason
from walle_stream.pattern import Trigger

pytestmark = pytest.mark.skipif(not native_available(), reason="walle_stream._ext is not built")


def random_native_trigger(rng: random.Random, name: str) -> Trigger:
    """Like test_stream_automaton.random_trigger without ``where`` (which stays on Python),
    with more attribute conditions, mixed value types and up to 5 elements."""
    pattern = None
    for i in range(rng.randint(1, 5)):
        kwargs = {"type": rng.choice(TYPES)}
        if rng.random() < 0.3:
            kwargs["page"] = rng.choice(PAGES)
        roll = rng.random()
        if roll < 0.15:
            kwargs["attrs"] = {"v": rng.randint(0, 1)}
        elif roll < 0.25:
            kwargs["attrs"] = {"v": rng.choice([1, 1.0, True, "1", 0]), "w": rng.choice(["x", "y"])}
        if pattern is None:
            pattern = Pattern.begin(f"e{i}", **kwargs)
        elif rng.random() < 0.35:
            pattern = pattern.next(f"e{i}", **kwargs)
        else:
            pattern = pattern.followed_by(f"e{i}", **kwargs)
    return pattern.within(rng.choice([5, 20, 60, 1000])).trigger(name)


def native_events(rng: random.Random, n: int, keys: int = 3) -> list[Event]:
    events = random_events(rng, n, keys)
    for event in events:  # a second attribute, sometimes missing or unhashable
        roll = rng.random()
        if roll < 0.6:
            event.attrs["w"] = rng.choice(["x", "y"])
        elif roll < 0.65:
            event.attrs["w"] = ["x"]
        if rng.random() < 0.1:
            event.attrs["v"] = rng.choice([True, 1.0, "1", None])
    return events


def names(fired) -> list[str]:
    return [t.name for t in fired]


@pytest.mark.parametrize("seed", range(16))
def test_random_triggers_match_oracle_and_python(seed):
    rng = random.Random(seed)
    triggers = [random_native_trigger(rng, f"t{i}") for i in range(rng.randint(1, 30))]
    events = native_events(rng, 500)
    native, python, oracle = NativeAutomaton(triggers), TriggerAutomaton(triggers), OracleMatcher(triggers)
    for index, event in enumerate(events):
        want = oracle.process(event.key, event)
        assert names(python.process(event.key, event)) == want
        assert names(native.process(event.key, event)) == want, f"event {index} {event}"
    # the batch path gives the same firings as the per-event path
    batch = NativeAutomaton(triggers).process_many(events)
    single = NativeAutomaton(triggers)
    assert [names(f) for f in batch] == [names(single.process(e.key, e)) for e in events]


@pytest.mark.parametrize("count", [50, 400])
def test_benchmark_triggers_match_python(count):
    """Many triggers sharing prefixes: nodes with dozens of children take the by-type path."""
    triggers = random_triggers(count, seed=5)
    events = [Event(r["type"], r["ts"], r["key"], r["page"], r["attrs"])
              for r in generate_events(6000, users=40, seed=5)]
    python = TriggerAutomaton(triggers)
    want = [names(python.process(e.key, e)) for e in events]
    got = [names(f) for f in NativeAutomaton(triggers).process_many(events)]
    assert got == want
    assert sum(map(len, want)) > 200


def test_add_and_remove_mid_stream_keep_others_in_flight():
    rng = random.Random(21)
    triggers = [random_native_trigger(rng, f"t{i}") for i in range(24)]
    events = native_events(rng, 1200)
    native, oracle = NativeAutomaton(triggers[:12]), OracleMatcher(triggers[:12])
    for index, event in enumerate(events):
        if index in (200, 500, 800):
            for trigger in triggers[12:][index // 100 % 4 * 3:][:4]:
                if trigger.name not in native.triggers:
                    native.add(trigger)
                    oracle.add(trigger)
        if index in (400, 700, 1000):
            for name in sorted(native.triggers)[index // 400::3][:3]:
                native.remove(name)
                oracle.remove(name)
        assert names(native.process(event.key, event)) == oracle.process(event.key, event), f"event {index}"
    assert len(native.nodes) == len(TriggerAutomaton(native.triggers.values()).nodes)


def test_a_trigger_added_mid_stream_ignores_earlier_events_even_on_shared_nodes():
    first = Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab")
    later = Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab2")
    native, oracle = NativeAutomaton([first]), OracleMatcher([first])
    stream = [Event("a", 1, "u"), Event("b", 2, "u"), Event("a", 3, "u"), None, Event("b", 4, "u"),
              Event("a", 5, "u"), Event("b", 6, "u")]
    got, want = [], []
    for event in stream:
        if event is None:  # added right after an 'a' that its shared node already holds
            native.add(later)
            oracle.add(later)
            continue
        got.append(names(native.process("u", event)))
        want.append(oracle.process("u", event))
    assert got == want == [[], ["ab"], [], ["ab"], [], ["ab", "ab2"]]


@pytest.mark.parametrize("direction", ["native", "python->native", "native->python"])
def test_state_round_trip_matches_uninterrupted_run(direction):
    rng = random.Random(3)
    triggers = [random_native_trigger(rng, f"t{i}") for i in range(25)]
    events = native_events(rng, 800)
    reference = TriggerAutomaton(triggers)
    expected = [names(reference.process(e.key, e)) for e in events]
    kinds = {"native": (NativeAutomaton, NativeAutomaton), "python->native": (TriggerAutomaton, NativeAutomaton),
             "native->python": (NativeAutomaton, TriggerAutomaton)}[direction]
    auto = kinds[0](triggers)
    got = []
    for index, event in enumerate(events):
        if index % 89 == 0:
            fresh = kinds[(index // 89) % 2 if direction != "native" else 0](triggers)
            copy_state(auto, fresh)
            auto = fresh
        got.append(names(auto.process(event.key, event)))
    assert got == expected


def test_dumps_equal_python_after_eviction_at_the_newest_clock():
    """After evicting at the newest clock (every key's clock is at most that), both hold
    exactly the partial matches that can still complete: the dumps must be equal."""
    rng = random.Random(8)
    triggers = [random_native_trigger(rng, f"t{i}") for i in range(30)]
    events = sorted(native_events(rng, 1500, keys=12), key=lambda e: e.ts)
    native, python = NativeAutomaton(triggers), TriggerAutomaton(triggers)
    for index, event in enumerate(events):
        assert names(native.process(event.key, event)) == names(python.process(event.key, event))
        if index % 100 == 99:
            horizon = event.ts
            native.evict(horizon)
            python.evict(horizon)
            assert sorted(native.keys) == sorted(python.keys)
            for key in python.keys:
                want = python.dump_key(key)
                want["active"] = sorted(want["active"])
                want["fresh"] = sorted(want["fresh"])
                assert native.dump_key(key) == want, f"key {key} after event {index}"
    assert native.state_size() == python.state_size()
    native.evict(events[-1].ts + 10_000)
    assert native.keys == {} and native.state_size() == 0


def test_evicted_key_slots_are_reused():
    trigger = Pattern.begin("x", type="a").followed_by("y", type="b").within(10).trigger("ab")
    auto = NativeAutomaton([trigger])
    for i in range(50):
        auto.process(f"k{i}", Event("a", i, f"k{i}"))
    assert len(auto.keys) == 50
    assert sorted(auto.evict(1000)) == sorted(f"k{i}" for i in range(50))
    assert auto.keys == {}
    auto.process("new", Event("a", 1000, "new"))
    assert auto.keys == {"new": 49}  # the last freed slot
    assert names(auto.process("new", Event("b", 1005, "new"))) == ["ab"]


def test_engine_uses_native_and_falls_back_visibly():
    events = list(generate_events(3000, users=30, seed=4))
    plain = Pattern.begin("v", type="page_view", page="detail").followed_by("c", type="add_to_cart").within(30000)
    picky = Pattern.begin("v", type="page_view").followed_by(
        "c", type="add_to_cart", where=lambda e: e.ts % 2 == 0).within(30000)
    mixed = StreamEngine(sinks=[ListSink()])
    reference = StreamEngine(config=EngineConfig(matcher="python"), sinks=[ListSink()])
    for engine in (mixed, reference):
        engine.add_trigger(plain.trigger("plain"))
    assert mixed.stats()["matchers"] == {"key": "native"}
    assert reference.stats()["matchers"] == {"key": "python: matcher='python'"}
    for index, raw in enumerate(events):
        if index == 1000:  # a where predicate: this field moves to Python, in-flight state too
            for engine in (mixed, reference):
                engine.add_trigger(picky.trigger("picky"))
            assert mixed.stats()["matchers"]["key"].startswith("python: trigger 'picky'")
        if index == 2000:  # and back
            for engine in (mixed, reference):
                engine.remove_task("picky")
            assert mixed.stats()["matchers"] == {"key": "native"}
        got = [(f.task, f.key) for f in mixed.push(raw)]
        assert got == [(f.task, f.key) for f in reference.push(raw)], f"event {index}"
    assert mixed.fired == reference.fired and mixed.fired["plain"] > 10 and mixed.fired["picky"] > 0
    with pytest.raises(StreamConfigError, match="where"):
        StreamEngine(config=EngineConfig(matcher="native")).add_trigger(picky.trigger("picky"))
    # a timestamp beyond the native clock range is a rejected event, not a crash
    assert mixed.push({"type": "page_view", "ts": 1 << 62, "key": "u"}) == []
    assert mixed.stats()["rejected_by_reason"]["field 'ts' is too large"] == 1
    with pytest.raises(StreamConfigError, match="matcher"):
        EngineConfig(matcher="fast")


def test_bad_input_is_rejected_with_a_clear_error():
    trigger = Pattern.begin("x", type="a", attrs={"v": 1}).followed_by("y", type="b").within(10).trigger("t")
    auto = NativeAutomaton([trigger])
    where = Pattern.begin("x", type="a", where=lambda e: True).within(5).trigger("w")
    assert "where" in unsupported_reason(where)
    with pytest.raises(StreamConfigError, match="where"):
        auto.add(where)
    with pytest.raises(StreamConfigError, match="native clock range"):
        auto.add(Pattern.begin("x", type="a").within(1 << 62).trigger("forever"))
    assert "forever" not in auto.triggers
    with pytest.raises(StreamConfigError, match="NaN"):
        auto.add(Pattern.begin("x", type="a", attrs={"v": float("nan")}).within(5).trigger("nan"))
    with pytest.raises(StreamConfigError, match="already registered"):
        auto.add(trigger)
    with pytest.raises(StreamConfigError, match="no trigger named"):
        auto.remove("nope")

    batch = auto.encode([Event("a", 1, "u", attrs={"v": 1}), Event("b", 2, "u")])
    with pytest.raises(TypeError):  # wrong dtype
        auto._m.process(batch.keys.astype(np.int64), batch.ts, batch.types, batch.pages, batch.vals)
    with pytest.raises(ValueError, match="'ts' has 1 rows"):
        auto._m.process(batch.keys, batch.ts[:1], batch.types, batch.pages, batch.vals)
    with pytest.raises(ValueError, match="attribute columns"):
        auto._m.process(batch.keys, batch.ts, batch.types, batch.pages, np.zeros((2, 3), np.int32))
    for field, bad, message in (("keys", 1 << 20, "key id"), ("ts", 1 << 62, "ts"), ("types", 7, "type id"),
                                ("pages", 9, "page id"), ("vals", 99, "value id 99 of column 0")):
        arrays = {name: getattr(batch, name).copy() for name in ("keys", "ts", "types", "pages", "vals")}
        arrays[field].flat[1] = bad
        with pytest.raises(ValueError, match=f"event 1: {message} .*out of range"):
            auto._m.process(*arrays.values())
    # a rejected batch changed nothing: the good one still fires exactly once
    event_index, trigger_ids = auto.process_encoded(batch)
    assert event_index.tolist() == [1] and [auto.trigger_of(t).name for t in trigger_ids] == ["t"]

    auto.add(Pattern.begin("x", type="c").within(5).trigger("c"))  # new vocabulary
    with pytest.raises(StreamConfigError, match="encode it again"):
        auto.process_encoded(batch)
    with pytest.raises(StreamConfigError, match="2 keys for 1 events"):
        auto.encode([Event("a", 1, "u")], keys=["u", "v"])
    with pytest.raises(ValueError, match="node id"):
        auto._m.load_key(0, 5, [(10_000, 1, 1)], [], [])
    with pytest.raises(ValueError, match="trigger id"):
        auto._m.load_key(0, 5, [], [], [(77, 1)])
    with pytest.raises(ValueError, match="no live trie node"):
        auto._m.add_node(12345, False, 0)
    with pytest.raises(ValueError, match="unknown predicate"):
        auto._m.add_node(0, False, 999)
    with pytest.raises(ValueError, match="first element cannot be strict"):
        auto._m.add_node(0, True, 0)
    with pytest.raises(ValueError, match="still has children"):
        auto._m.remove_node(1)
    with pytest.raises(ValueError, match="within_ms"):
        auto._m.add_trigger(1, 0)
    with pytest.raises(ValueError, match="sorted"):
        auto._m.add_pred(0, -1, [0, 0], [0, 0])
    with pytest.raises(ValueError, match="only grows"):
        auto._m.set_vocab(0, 0, 0, 0)


def test_unhashable_and_cross_type_attribute_values():
    """Python equality decides: 1 == 1.0 == True match a condition on 1, "1" and [1] do not."""
    trigger = Pattern.begin("x", type="a", attrs={"v": 1}).within(10).trigger("one")
    native, python = NativeAutomaton([trigger]), TriggerAutomaton([trigger])
    for ts, value in enumerate([1, 1.0, True, "1", [1], None, 2, 1]):
        event = Event("a", ts * 100, "u", attrs={"v": value})
        assert names(native.process("u", event)) == names(python.process("u", event)), value


def test_encoded_batch_is_tied_to_its_matcher_state():
    trigger = Pattern.begin("x", type="a").within(10).trigger("a")
    auto = NativeAutomaton([trigger])
    batch = auto.encode([Event("a", 1, "u")])
    auto.process_encoded(batch)
    auto.evict(10_000)  # frees the key slot the batch names
    with pytest.raises(StreamConfigError, match="encode it again"):
        auto.process_encoded(dataclasses.replace(batch))


def test_native_json_dump_is_the_compact_json_of_dump_key():
    """What a commit writes for a native key (built in C++) is exactly ``json.dumps`` of
    ``dump_key``: same order of entries (code points, non-ASCII and surrogates included),
    same escapes, through evictions that prune entries."""
    rng = random.Random(12)
    prefixes = ["t", "é", '"q', "\U0001f600", "\ud800", "Z", "a\\b"]
    triggers = []
    for i in range(40):
        trigger = random_native_trigger(rng, "placeholder")
        first = trigger.elements[0]
        # a non-ASCII page on some first elements puts it into node signatures too
        page = rng.choice([first.page, "détail", "\u4e2d"]) if rng.random() < 0.3 else first.page
        elements = (dataclasses.replace(first, page=page),) + trigger.elements[1:]
        triggers.append(dataclasses.replace(trigger, name=f"{rng.choice(prefixes)}{i}", elements=elements))
    events = native_events(rng, 1200, keys=6)
    for event in events:
        if rng.random() < 0.3:
            event.page = rng.choice(["détail", "\u4e2d"])
    native = NativeAutomaton(triggers)
    checked = 0
    for index, event in enumerate(events):
        native.process(event.key, event)
        if index % 50 == 49:
            if index % 200 == 199:
                native.evict(event.ts - 30)
            for key in list(native.keys):
                text = native.dump_key_json(key)
                assert text == json.dumps(native.dump_key(key), separators=(",", ":")), f"key {key}"
                checked += bool(json.loads(text)["last_fire"])
    assert checked > 10
    assert native.dump_key_json("no such key") is None


def test_counters_count_the_work_of_matching():
    """a -> b, then b: the first event starts a match (1 advance, node 'a' entered), the
    second advances it into 'a/b' (1 advance, 1 trigger check, 1 firing) and, waiting on
    'a', is scanned once; a third event of another type scans nothing."""
    auto = NativeAutomaton([Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab")])
    for ts, etype in enumerate(["a", "b", "c"]):
        auto.process("u", Event(etype, ts, "u"))
    assert auto.counters(reset=True) == {"events": 3, "scanned": 1, "advances": 2, "entered": 2, "checks": 1,
                                         "fires": 1}
    assert auto.counters() == {"events": 0, "scanned": 0, "advances": 0, "entered": 0, "checks": 0, "fires": 0}
