"""A synthetic e-commerce behaviour trace, for demos, tests and benchmarks.

Users are picked with a Zipf-like skew (a few heavy users produce most events, as in
real traffic) and walk a small Markov chain: home -> list/search -> detail -> add to
cart -> cart -> checkout -> purchase, with drop-offs at every step and occasional
clicks and scrolls. Products are Zipf-skewed too. Time advances by exponential gaps, a
small share of events is delivered late (event time in the past), and ``bad_rate``
injects malformed events to exercise validation. The same seed gives the same trace.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# state -> [(next state, probability)]; "end" closes the session
_CHAIN: dict[str, list[tuple[str, float]]] = {
    "home": [("list", 0.45), ("search", 0.25), ("detail", 0.15), ("scroll", 0.05), ("end", 0.10)],
    "search": [("list", 0.80), ("end", 0.20)],
    "list": [("detail", 0.55), ("scroll", 0.20), ("list", 0.10), ("end", 0.15)],
    "scroll": [("list", 0.40), ("detail", 0.40), ("end", 0.20)],
    "detail": [("add_to_cart", 0.22), ("click", 0.18), ("detail", 0.20), ("list", 0.25), ("end", 0.15)],
    "click": [("detail", 0.70), ("end", 0.30)],
    "add_to_cart": [("cart", 0.50), ("detail", 0.20), ("list", 0.20), ("end", 0.10)],
    "cart": [("checkout", 0.55), ("detail", 0.15), ("end", 0.30)],
    "checkout": [("purchase", 0.75), ("end", 0.25)],
    "purchase": [("home", 0.30), ("end", 0.70)],
}
# state -> (event type, page)
_EMIT = {
    "home": ("page_view", "home"), "search": ("search", "list"), "list": ("page_view", "list"),
    "scroll": ("scroll", "list"), "detail": ("page_view", "detail"), "click": ("click", "detail"),
    "add_to_cart": ("add_to_cart", "detail"), "cart": ("page_view", "cart"),
    "checkout": ("page_view", "checkout"), "purchase": ("purchase", "checkout"),
}
_QUERIES = ("shoes", "phone", "lamp", "coffee", "jacket", "book", "tent", "watch")


def _zipf_cdf(n: int, skew: float) -> list[float]:
    weights = list(itertools.accumulate(1.0 / (i + 1) ** skew for i in range(n)))
    return [w / weights[-1] for w in weights]


def generate_events(count: int, users: int = 1000, seed: int = 0, skew: float = 1.1, products: int = 500,
                    late_rate: float = 0.01, bad_rate: float = 0.0, start_ts: int = 1_700_000_000_000,
                    mean_gap_ms: float = 20.0) -> Iterator[dict[str, Any]]:
    """Yield ``count`` events as JSON-able dicts (malformed ones included when bad_rate > 0)."""
    if count < 0 or users <= 0 or products <= 0:
        raise ValueError("[stream] gen: count must be >= 0, users and products > 0")
    rng = random.Random(seed)
    user_cdf = _zipf_cdf(users, skew)
    product_cdf = _zipf_cdf(products, skew)
    position: dict[int, str] = {}  # user -> current state of the walk
    viewing: dict[int, int] = {}  # user -> product on the detail page
    ts = start_ts
    for _ in range(count):
        ts += int(rng.expovariate(1.0 / mean_gap_ms))
        if rng.random() < bad_rate:
            yield _bad_event(rng, ts)
            continue
        user = bisect.bisect_left(user_cdf, rng.random())
        state = position.get(user)
        if state is None:
            state = "home"
        else:
            state = _step(rng, state)
            if state == "end":
                state = "home"  # a new session
        position[user] = state
        etype, page = _EMIT[state]
        attrs: dict[str, Any] = {}
        if state in ("detail", "click"):
            viewing[user] = bisect.bisect_left(product_cdf, rng.random())
        if state in ("detail", "click", "add_to_cart"):
            sku = viewing.setdefault(user, bisect.bisect_left(product_cdf, rng.random()))
            attrs = {"sku": f"p{sku}", "price": round(5 + (sku * 7919 % 1000) / 10, 2)}
        elif state == "search":
            attrs = {"query": rng.choice(_QUERIES)}
        elif state == "purchase":
            attrs = {"amount": round(rng.uniform(5, 300), 2)}
        event_ts = ts - rng.randint(1, 3_000) if rng.random() < late_rate else ts
        yield {"type": etype, "ts": event_ts, "key": f"u{user}", "page": page, "attrs": attrs}


def _step(rng: random.Random, state: str) -> str:
    roll = rng.random()
    for nxt, p in _CHAIN[state]:
        roll -= p
        if roll < 0:
            return nxt
    return _CHAIN[state][-1][0]


def _bad_event(rng: random.Random, ts: int) -> dict[str, Any]:
    kind = rng.randrange(3)
    if kind == 0:
        return {"type": "page_view", "key": "u0"}  # no ts
    if kind == 1:
        return {"type": "click", "ts": str(ts), "key": "u0"}  # ts as a string
    return {"type": "click", "ts": ts, "key": 42}  # key not a string


def write_jsonl(path: str | Path, events: Iterator[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event, separators=(",", ":")) + "\n")
            count += 1
    return count
