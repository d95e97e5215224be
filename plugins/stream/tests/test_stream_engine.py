"""The engine end to end: validation, late events, features at firing, sources, hot changes."""

from __future__ import annotations

import random
import threading

import pytest
from oracle import OracleMatcher
from test_stream_automaton import random_trigger
from test_stream_windows import naive_value

from walle_stream import EngineConfig, Event, ListSink, Pattern, StreamEngine
from walle_stream.errors import StreamConfigError
from walle_stream.gen import generate_events
from walle_stream.sources import BoundedEventQueue
from walle_stream.tasks import task_from_table
from walle_stream.windows import FeatureSpec


def late_stream(seed: int, n: int = 1200) -> list[dict]:
    rng = random.Random(seed)
    ts, out = 1000, []
    for _ in range(n):
        ts += rng.randint(0, 8)
        event_ts = ts - rng.randint(1, 60) if rng.random() < 0.15 else ts
        out.append({"type": rng.choice("abcd"), "ts": event_ts, "key": f"u{rng.randrange(5)}",
                    "page": rng.choice(["home", "detail"]), "attrs": {"v": rng.randint(0, 1), "price": rng.randint(1, 5)}})
    return out


@pytest.mark.parametrize("policy", ["drop", "include"])
def test_engine_fires_and_features_match_oracles(policy):
    rng = random.Random(5)
    triggers = [random_trigger(rng, f"t{i}") for i in range(12)]
    feature = FeatureSpec("recent", "sliding", "sum", "attrs.price", size_ms=40, slide_ms=20)
    config = EngineConfig(key_name="user", allowed_lateness_ms=20, late_policy=policy, max_disorder_ms=100,
                          evict_every=50)
    sink = ListSink()
    engine = StreamEngine(config=config, sinks=[sink])
    for trigger in triggers:
        engine.add_trigger(trigger, [feature])
    oracle = OracleMatcher(triggers)
    history: dict[str, list] = {}
    max_ts, expected, late = -1, [], 0
    for order, raw in enumerate(late_stream(1)):
        if raw["ts"] < max_ts - 20 and policy == "drop":
            late += 1
        else:
            event = Event(**raw)
            history.setdefault(event.key, []).append((len(history.get(event.key, [])), event))
            for name in oracle.process(event.key, event):
                rows = history[event.key]
                expected.append((name, event.key, naive_value(feature, rows, event.ts), raw["ts"]))
        max_ts = max(max_ts, raw["ts"])
        engine.push(raw)
    got = [(task, key, features["recent"], event.ts) for task, key, features, event in sink.fires]
    assert got == expected
    assert engine.late_dropped == late
    assert (late > 0) == (policy == "drop")


def test_bad_events_are_counted_and_never_stop_the_stream():
    engine = StreamEngine(config=EngineConfig(max_disorder_ms=1000, allowed_lateness_ms=1000))
    engine.add_trigger(Pattern.begin("x", type="a").within(10).trigger("t"))
    bad = [{"type": "a", "key": "u"}, {"type": "a", "ts": "5", "key": "u"}, {"type": "a", "ts": 5, "key": 3},
           {"type": "", "ts": 5, "key": "u"}, {"type": "a", "ts": True, "key": "u"}, [1, 2],
           {"type": "a", "ts": 5, "key": "u", "attrs": [1]}, {"type": "a", "ts": 5, "key": "u", "page": 7}]
    engine.push({"type": "a", "ts": 5000, "key": "u"})
    for raw in bad:
        assert engine.push(raw) == []
    engine.push({"type": "a", "ts": 100, "key": "u"})  # more than max_disorder behind
    engine.push_line(b"{not json")
    assert len(engine.push({"type": "a", "ts": 5001, "key": "u"})) == 1
    stats = engine.stats()
    assert stats["rejected"] == len(bad) + 2
    assert stats["rejected_by_reason"]["ts far out of order"] == 1
    assert stats["rejected_by_reason"]["missing field 'ts'"] == 1
    assert stats["events"] == 2 and engine.offset == len(bad) + 4


def test_partition_by_attribute_and_unknown_keys():
    task = task_from_table("per_session", {"sequence": ["a", "b"], "within_ms": 100, "key": "session"})
    engine = StreamEngine([task], EngineConfig(key_name="user"))
    engine.push({"type": "a", "ts": 1, "key": "u1", "attrs": {"session": "s1"}})
    assert engine.push({"type": "b", "ts": 2, "key": "u2", "attrs": {"session": "s1"}})[0].key == "s1"
    assert engine.push({"type": "b", "ts": 3, "key": "u1"}) == []  # no session attr: not seen


def test_add_and_remove_tasks_while_running():
    engine = StreamEngine()
    ab = Pattern.begin("x", type="a").followed_by("y", type="b").within(100).trigger("ab")
    engine.add_trigger(ab)
    engine.push({"type": "a", "ts": 1, "key": "u"})
    engine.add_trigger(Pattern.begin("x", type="b").within(100).trigger("just_b"))
    assert [f.task for f in engine.push({"type": "b", "ts": 2, "key": "u"})] == ["ab", "just_b"]
    engine.push({"type": "a", "ts": 3, "key": "u"})
    engine.remove_task("just_b")
    assert [f.task for f in engine.push({"type": "b", "ts": 4, "key": "u"})] == ["ab"]
    with pytest.raises(StreamConfigError, match="no task named"):
        engine.remove_task("just_b")


def test_bounded_queue_source_with_a_producer_thread():
    events = list(generate_events(3000, users=50, seed=2))
    queue = BoundedEventQueue(maxsize=64)

    def produce():
        for raw in events:
            queue.put(raw)
        queue.close()

    trigger = Pattern.begin("v", type="page_view", page="detail").followed_by("c", type="add_to_cart").within(30000)
    reference = StreamEngine()
    reference.add_trigger(trigger.trigger("cart"))
    for raw in events:
        reference.push(raw)
    engine = StreamEngine()
    engine.add_trigger(trigger.trigger("cart"))
    thread = threading.Thread(target=produce)
    thread.start()
    assert engine.run_queue(queue) == len(events)
    thread.join()
    assert engine.fired == reference.fired and engine.fired["cart"] > 0
    with pytest.raises(ValueError, match="maxsize"):
        BoundedEventQueue(0)


def test_bad_config_is_rejected():
    with pytest.raises(StreamConfigError, match="late_policy"):
        EngineConfig(late_policy="keep")
    with pytest.raises(StreamConfigError, match="commit_every"):
        EngineConfig(commit_every=0)
