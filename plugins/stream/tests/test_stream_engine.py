"""The engine end to end: validation, late events, features at firing, sources, hot changes."""

from __future__ import annotations

import dataclasses
import random
import threading
from pathlib import Path

import pytest
from oracle import OracleMatcher
from test_stream_automaton import random_trigger
from test_stream_durability import snapshot
from test_stream_windows import naive_value

from walle_stream import CallbackSink, EngineConfig, Event, ListSink, Pattern, StreamEngine
from walle_stream.bench import random_triggers
from walle_stream.errors import StreamConfigError
from walle_stream.gen import generate_events, write_jsonl
from walle_stream.native import native_available
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


BATCH_FEATURES = (FeatureSpec("views", "sliding", "count", size_ms=120_000, slide_ms=30_000, types=("page_view",)),
                  FeatureSpec("price", "session", "mean", "attrs.price", gap_ms=20_000),
                  FeatureSpec("skus", "count", "last_n", "attrs.sku", size=10, n=3),
                  FeatureSpec("pages", "tumbling", "distinct", "page", size_ms=60_000),
                  FeatureSpec("spent", "count", "sum", "attrs.amount", size=5))


def batch_engine(batch_size: int, state: Path, sink: ListSink) -> StreamEngine:
    """Random selective triggers on the user key, one partitioned by the product and one by
    the search query with a ``where`` predicate (Python automaton); events without a sku or
    query are not seen by those."""
    engine = StreamEngine(config=EngineConfig(batch_size=batch_size, commit_every=50, evict_every=200,
                                              record_fires=True, allowed_lateness_ms=2000),
                          sinks=[sink], state_path=state)
    for trigger in random_triggers(40, seed=3):
        engine.add_trigger(trigger, BATCH_FEATURES[: 1 + int(trigger.name[1:]) % len(BATCH_FEATURES)])
    per_sku = Pattern.begin("v", type="page_view", page="detail").followed_by("c", type="add_to_cart")
    engine.add_trigger(dataclasses.replace(per_sku.within(60_000).trigger("per_sku"), key="sku"), BATCH_FEATURES[2:3])
    long_query = Pattern.begin("s", type="search", where=lambda e: len(e.attrs["query"]) > 4).followed_by(
        "t", type="search")
    engine.add_trigger(dataclasses.replace(long_query.within(120_000).trigger("long_query"), key="query"),
                       BATCH_FEATURES)
    return engine


def test_batches_give_the_results_of_one_event_at_a_time(tmp_path):
    """run_jsonl in batches (of sizes that do and do not divide the commit interval) fires the
    same tasks with the same features in the same order, and leaves the same durable state
    (offsets, counters, firings, partial matches, windows), as one line at a time."""
    trace = tmp_path / "trace.jsonl"
    write_jsonl(trace, generate_events(6_000, users=60, seed=9, bad_rate=0.01, late_rate=0.03))
    runs = {}
    for batch_size in (1, 37, 256):
        sink = ListSink()
        engine = batch_engine(batch_size, tmp_path / f"b{batch_size}.db", sink)
        if native_available():
            assert engine.matchers == {"key": "native", "sku": "native",
                                       "query": "python: trigger 'long_query': element 's' has a 'where' predicate"}
        commits = []  # (inputs, offset, partial matches) at every commit: a restart resumes from these
        store_commit = engine.store.commit

        def recording_commit(meta, *rest, _commit=store_commit, _commits=commits, _engine=engine):
            _commits.append((meta["inputs"], meta["offset"], _engine.stats()["partial_matches"]))
            _commit(meta, *rest)

        engine.store.commit = recording_commit
        assert engine.run_jsonl(trace) == 6_000
        engine.close()
        stats = engine.stats()
        del stats["latency_ms"]
        fires = [(task, key, features, event.to_dict()) for task, key, features, event in sink.fires]
        runs[batch_size] = (fires, stats, snapshot(tmp_path / f"b{batch_size}.db"), commits)
    fires, stats, state, commits = runs[1]
    assert len(commits) == 6_000 // 50 + 1
    assert len(fires) > 500 and {task for task, *_ in fires} >= {"per_sku", "long_query"}
    assert stats["rejected"] > 0 and stats["late_dropped"] > 0
    for batch_size in (37, 256):
        assert runs[batch_size][0] == fires, f"batch_size={batch_size}"
        assert runs[batch_size][1] == stats, f"batch_size={batch_size}"
        assert runs[batch_size][2] == state, f"batch_size={batch_size}"
        assert runs[batch_size][3] == commits, f"batch_size={batch_size}"


def test_batched_queue_matches_push():
    events = list(generate_events(2_000, users=30, seed=6, late_rate=0.03))
    reference, batched = ListSink(), ListSink()
    one = StreamEngine(config=EngineConfig(evict_every=300), sinks=[reference])
    many = StreamEngine(config=EngineConfig(evict_every=300, batch_size=64), sinks=[batched])
    for engine in (one, many):
        for trigger in random_triggers(20, seed=1):
            engine.add_trigger(trigger, BATCH_FEATURES[:2])
    for raw in events:
        one.push(raw)
    queue = BoundedEventQueue(maxsize=len(events) + 1)
    for raw in events:
        queue.put(raw)
    queue.close()
    assert many.run_queue(queue) == len(events)
    assert many.run_queue(queue) == 0  # closed and drained
    assert batched.fires == reference.fires and len(reference.fires) > 50
    assert many.push_many([]) == []


def test_sinks_cannot_change_tasks_or_push_mid_batch():
    engine = StreamEngine(config=EngineConfig(batch_size=10))
    engine.add_trigger(Pattern.begin("x", type="a").within(10).trigger("t"))
    calls = []

    def add_from_sink(task, key, features, event):
        calls.append(task)
        engine.add_trigger(Pattern.begin("x", type="b").within(10).trigger(f"new{len(calls)}"))

    engine.sinks.append(CallbackSink(add_from_sink))
    engine.push({"type": "a", "ts": 1, "key": "u"})  # a batch of one: the change is exact
    assert "new1" in engine.tasks
    with pytest.raises(StreamConfigError, match="batch of 2 inputs"):
        engine.push_many([{"type": "a", "ts": 2, "key": "u"}, {"type": "b", "ts": 3, "key": "u"}])
    engine.sinks[-1] = CallbackSink(lambda *_: engine.push({"type": "a", "ts": 9, "key": "u"}))
    with pytest.raises(StreamConfigError, match="inside a sink"):
        engine.push({"type": "a", "ts": 4, "key": "u"})
    with pytest.raises(StreamConfigError, match="offsets"):
        engine.push_many([{"type": "a", "ts": 5, "key": "u"}], offsets=[1, 2])
    with pytest.raises(StreamConfigError, match="batch_size"):
        EngineConfig(batch_size=0)
