"""Throughput of the native and Python shared matchers vs a naive matcher, by number of triggers.

    python -m walle_stream.bench [--events N] [--triggers 1,100,1000,10000] [--seed S]

The naive matcher keeps, per trigger and key, the same best-start partial matches as the
shared automaton but checks every trigger on every event: its cost grows linearly with the
number of triggers. All get pre-parsed events (matching only). The native matcher runs on
batches interned once (``native``: best of ``--repeats`` runs, wall clock and CPU time); its
``native+encode`` column includes interning the Event objects in Python. ``advances/event``
(partial matches the native matcher moved into a node per event, from its counters) and
``ns/advance`` (native CPU time per event divided by them) show the cost structure behind the
throughput ratio. The full engine (JSON parsing, validation, features, SQLite commits) is
measured separately, event by event (batch 1) and in batches, with its event-to-sink latency
and the state size per 1,000 keys. Not a test: numbers depend on the machine and its load
(printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from walle_stream.automaton import TriggerAutomaton
from walle_stream.engine import EngineConfig, StreamEngine
from walle_stream.events import Event
from walle_stream.gen import generate_events, write_jsonl
from walle_stream.native import NativeAutomaton, native_available
from walle_stream.pattern import STRICT, Pattern, Trigger
from walle_stream.sinks import ListSink
from walle_stream.tasks import StreamTask
from walle_stream.windows import FeatureSpec

# (type, page) pairs the generator emits, so random triggers can actually match
_VOCABULARY = [("page_view", "home"), ("page_view", "list"), ("page_view", "detail"), ("page_view", "cart"),
               ("page_view", "checkout"), ("search", None), ("scroll", None), ("click", None),
               ("add_to_cart", None), ("purchase", None)]


def random_triggers(count: int, seed: int) -> list[Trigger]:
    """Distinct random sequences of 2-4 elements over the trace's vocabulary. Like real
    tasks most steps are selective: a product (``sku``) or a search query, not just an
    event type, so each trigger cares about a small share of the events."""
    rng = random.Random(seed)
    triggers, seen = [], set()
    while len(triggers) < count:
        steps = [_random_step(rng) for _ in range(rng.randint(2, 4))]
        strict = [rng.random() < 0.2 for _ in steps]
        signature = (repr(steps), tuple(strict))
        if signature in seen:
            continue
        seen.add(signature)
        etype, page, attrs = steps[0]
        pattern = Pattern.begin("s0", type=etype, page=page, attrs=attrs)
        for index, ((etype, page, attrs), is_strict) in enumerate(zip(steps[1:], strict[1:]), start=1):
            step = pattern.next if is_strict else pattern.followed_by
            pattern = step(f"s{index}", type=etype, page=page, attrs=attrs)
        triggers.append(pattern.within(rng.choice([10_000, 30_000, 60_000])).trigger(f"t{len(triggers)}"))
    return triggers


def _random_step(rng: random.Random) -> tuple[str, str | None, dict[str, str] | None]:
    roll = rng.random()
    if roll < 0.5:
        # products skewed like the generator's, so popular ones match often
        sku = f"p{min(int(rng.paretovariate(1.0)) - 1, 499)}" if rng.random() < 0.5 else f"p{rng.randrange(500)}"
        etype, page = rng.choice([("page_view", "detail"), ("click", None), ("add_to_cart", None)])
        return etype, page, {"sku": sku}
    if roll < 0.6:
        return "search", None, {"query": rng.choice(["shoes", "phone", "lamp", "coffee", "jacket", "book"])}
    etype, page = rng.choice(_VOCABULARY)
    return etype, page, None


class NaiveMatcher:
    """Every trigger on every event: per (trigger, key) the best start per element index."""

    def __init__(self, triggers: list[Trigger]) -> None:
        self.triggers = triggers
        self.state: dict[tuple[int, str], list] = {}  # -> [seq, clock, best starts, fresh starts, last fire]

    def process(self, key: str, event: Event) -> list[str]:
        fired = []
        for index, trigger in enumerate(self.triggers):
            st = self.state.get((index, key))
            if st is None:
                st = self.state[(index, key)] = [0, -1, {}, {}, 0]
            st[0] += 1
            seq = st[0]
            st[1] = clock = max(st[1], event.ts)
            best, fresh, new = st[2], st[3], {}
            elements = trigger.elements
            for i, element in enumerate(elements):
                if not element.accepts(event):
                    continue
                if i == 0:
                    cand = (seq, clock)
                else:
                    cand = fresh.get(i - 1) if element.contiguity == STRICT else best.get(i - 1)
                    if cand is None or clock - cand[1] > trigger.within_ms:
                        continue
                if i == len(elements) - 1:
                    if cand[0] > st[4] and clock - cand[1] <= trigger.within_ms:
                        st[4] = seq
                        fired.append(trigger.name)
                else:
                    new[i] = cand
            for i, cand in new.items():
                if i not in best or cand[0] > best[i][0]:
                    best[i] = cand
            st[3] = new
        return fired


def _rate(process, events: list[Event], budget_s: float) -> tuple[float, int, list[list[str]]]:
    """Events per second over the events (or as many as fit in ``budget_s``), and the names
    of the triggers fired on each event processed."""
    fired: list[list[str]] = []
    start = time.perf_counter()
    for count, event in enumerate(events, start=1):
        fired.append([t if isinstance(t, str) else t.name for t in process(event.key, event)])
        if count % 1000 == 0 and time.perf_counter() - start > budget_s:
            break
    return count / (time.perf_counter() - start), count, fired


def _native_rate(triggers: list[Trigger], events: list[Event], repeats: int) -> dict:
    """The native matcher on whole batches: the best of ``repeats`` runs (a fresh matcher
    each), wall clock and process CPU time, plus one run that includes interning the events."""
    best_wall = best_cpu = 0.0
    fired: list[list[str]] = []
    for _ in range(repeats):
        automaton = NativeAutomaton(triggers)
        batch = automaton.encode(events)
        automaton.counters(reset=True)
        wall, cpu = time.perf_counter(), time.process_time()
        event_index, trigger_ids = automaton.process_encoded(batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall, best_cpu = max(best_wall, len(events) / wall), max(best_cpu, len(events) / max(cpu, 1e-9))
    counters = automaton.counters()
    fired = [[] for _ in events]
    for i, tid in zip(event_index.tolist(), trigger_ids.tolist()):
        fired[i].append(automaton.trigger_of(tid).name)
    for names in fired:
        names.sort()
    automaton = NativeAutomaton(triggers)
    start = time.perf_counter()
    automaton.process_encoded(automaton.encode(events))
    with_encoding = len(events) / (time.perf_counter() - start)
    return {"wall": best_wall, "cpu": best_cpu, "with_encoding": with_encoding, "fired": fired,
            "nodes": len(automaton.nodes), "counters": counters}


def bench_matching(events: list[Event], counts: list[int], seed: int, budget_s: float,
                   repeats: int = 3) -> tuple[list[list[str]], dict[int, float]]:
    """One row per trigger count; ``agree`` checks the native firings event by event against
    the Python automaton, and the naive matcher's firing count against both."""
    rows, native_rates = [], {}
    for count in counts:
        triggers = random_triggers(count, seed)
        native = _native_rate(triggers, events, repeats) if native_available() else None
        python_rate, n_python, python_fired = _rate(TriggerAutomaton(triggers).process, events, budget_s)
        naive_rate, n_naive, naive_fired = _rate(NaiveMatcher(triggers).process, events, budget_s)
        check = TriggerAutomaton(triggers)
        same = sum(map(len, naive_fired)) == sum(len(check.process(e.key, e)) for e in events[:n_naive])
        if native is not None:
            same = same and native["fired"][:n_python] == python_fired
            native_rates[count] = native["wall"]
        cells = [f"{native['wall']:,.0f}", f"{native['cpu']:,.0f}", f"{native['with_encoding']:,.0f}"] \
            if native is not None else ["-", "-", "-"]
        fired = sum(map(len, native["fired"])) if native is not None else sum(map(len, python_fired))
        # the cost structure: partial matches advanced per event and the CPU time per advance
        # (the whole per-event cost divided by them: what a trigger that matches costs)
        if native is not None:
            per_event = native["counters"]["advances"] / max(native["counters"]["events"], 1)
            costs = [f"{per_event:.2f}", f"{1e9 / native['cpu'] / per_event:.0f}" if per_event else "-"]
        else:
            costs = ["-", "-"]
        rows.append([str(count), *cells, f"{python_rate:,.0f}", f"{naive_rate:,.0f}",
                     f"{(native['wall'] if native else python_rate) / naive_rate:,.0f}x",
                     str(len(check.nodes)), f"{fired / (len(events) if native else n_python):.2f}", *costs,
                     "yes" if same else "NO"])
    return rows, native_rates


def bench_engine(path: Path, triggers: int, seed: int, state: Path | None, matcher: str,
                 limit: int | None = None, batch_size: int = EngineConfig.batch_size) -> dict:
    features = (FeatureSpec("views", "sliding", "count", size_ms=300_000, slide_ms=60_000, types=("page_view",)),
                FeatureSpec("skus", "count", "last_n", "attrs.sku", size=20, n=3))
    tasks = [StreamTask(t.name, t, features) for t in random_triggers(triggers, seed)]
    engine = StreamEngine(tasks, EngineConfig(commit_every=1000, matcher=matcher, batch_size=batch_size),
                          sinks=[ListSink()],
                          state_path=state)
    start = time.perf_counter()
    lines = engine.run_jsonl(path, limit)
    elapsed = time.perf_counter() - start
    engine.close()
    stats = engine.stats()
    stats["lines_per_s"] = lines / elapsed
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--triggers", default="1,100,1000,10000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=3.0, help="time cap per Python/naive measurement")
    parser.add_argument("--repeats", type=int, default=3, help="native runs per trigger count (the best counts)")
    parser.add_argument("--engine-python-lines", type=int, default=20_000,
                        help="lines for the full engine on the Python automaton at 1,000 triggers (it is slow)")
    args = parser.parse_args()
    counts = [int(c) for c in args.triggers.split(",")]
    raw = list(generate_events(args.events, args.users, args.seed))
    events = [Event(r["type"], r["ts"], r["key"], r["page"], r["attrs"]) for r in raw]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"matching only, {len(events):,} pre-parsed events, {args.users:,} users, load average {load:.2f}")
    if not native_available():
        print("(the native matcher is not built: native columns are empty)")
    header = ["triggers", "native ev/s", "native cpu ev/s", "native+encode ev/s", "python ev/s", "naive ev/s",
              "native/naive", "trie nodes", "fires/event", "advances/event", "ns/advance", "agree"]
    rows, native_rates = bench_matching(events, counts, args.seed, args.budget_s, args.repeats)
    _print_table(header, rows)
    if 1 in native_rates and 1000 in native_rates:
        print(f"native throughput 1000 triggers / 1 trigger: {native_rates[1000] / native_rates[1]:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        write_jsonl(trace, iter(raw))
        print("\nfull engine from JSONL (validation, 2 features per task, SQLite state, commit every 1000; "
              "latency: batch start -> last sink return, per firing event)")
        rows = []
        batch = EngineConfig.batch_size
        runs = [(1, "auto", None, 1), (1, "auto", None, batch), (1000, "auto", None, 1), (1000, "auto", None, batch),
                (1000, "python", args.engine_python_lines, batch)]
        for count, matcher, limit, batch_size in runs:
            db = Path(tmp) / f"state{count}{matcher}{batch_size}.db"
            stats = bench_engine(trace, count, args.seed, db, matcher, limit, batch_size)
            size, keys = _live_state(db)
            used = sorted(set(stats["matchers"].values()))
            rows.append([str(count), ",".join(m.split(":")[0] for m in used), str(batch_size), f"{limit or len(raw):,}",
                         f"{stats['lines_per_s']:,.0f}", str(stats["latency_ms"]["p50"]),
                         str(stats["latency_ms"]["p99"]), f"{sum(t['fired'] for t in stats['tasks'].values()):,}",
                         str(stats["partial_matches"]), f"{size / max(keys, 1) * 1000 / 1024:,.0f}"])
        _print_table(["triggers", "matcher", "batch", "lines", "events/s", "fire latency p50 ms", "p99 ms", "fired",
                      "partial matches", "live state KiB / 1000 keys"], rows)


def _live_state(db: Path) -> tuple[int, int]:
    """Bytes of live state rows (partial matches + windows) and the number of keys holding them."""
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        size = conn.execute("SELECT (SELECT coalesce(sum(length(data)), 0) FROM match_state) + "
                            "(SELECT coalesce(sum(length(data)), 0) FROM window_state)").fetchone()[0]
        keys = conn.execute("SELECT count(*) FROM (SELECT key FROM match_state UNION "
                            "SELECT key FROM window_state)").fetchone()[0]
    return int(size), int(keys)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
