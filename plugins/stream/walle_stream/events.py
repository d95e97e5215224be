"""Events and their validation.

A stream must survive bad input: a malformed event is turned into a
:class:`RejectedEvent` with a short reason, counted per reason and logged (the first
occurrence of each reason as a warning, later ones at debug level so a flood of bad
events cannot flood the log), and the stream goes on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("walle_stream")


@dataclass(slots=True)
class Event:
    """One user-behaviour event. ``ts`` is event time in milliseconds; ``key`` partitions
    the stream (a user or a session id); ``attrs`` holds anything else."""

    type: str
    ts: int
    key: str
    page: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "ts": self.ts, "key": self.key, "page": self.page, "attrs": self.attrs}


class RejectedEvent(ValueError):
    """An event failed validation; ``reason`` is a short, countable description."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"[stream] rejected event: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


_REQUIRED = (("type", str), ("ts", int), ("key", str))
_NO_ATTRS: dict[str, Any] = {}  # marks "no attrs field" in the fast path; never handed out
_decode_json = json.JSONDecoder().decode
#: timestamps at or above this (ms; 146 million years) are rejected: the native matcher keeps
#: clocks in 64-bit integers and must be able to subtract them
MAX_TS = 1 << 62


def event_from_dict(raw: Any) -> Event:
    """Build an :class:`Event` from a decoded JSON object, or raise :class:`RejectedEvent`."""
    if not isinstance(raw, dict):
        raise RejectedEvent(f"not a JSON object ({type(raw).__name__})")
    for name, kind in _REQUIRED:
        if name not in raw:
            raise RejectedEvent(f"missing field '{name}'")
        value = raw[name]
        # bool is an int subclass in Python; a boolean timestamp is a bug upstream
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RejectedEvent(f"field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    if not raw["type"]:
        raise RejectedEvent("field 'type' is empty")
    if raw["ts"] < 0:
        raise RejectedEvent("field 'ts' is negative")
    if raw["ts"] >= MAX_TS:
        raise RejectedEvent("field 'ts' is too large", f"{raw['ts']} >= 2^62 ms")
    page = raw.get("page", "")
    if not isinstance(page, str):
        raise RejectedEvent(f"field 'page' must be str, got {type(page).__name__}")
    attrs = raw.get("attrs", {})
    if attrs is None:
        attrs = {}
    if not isinstance(attrs, dict):
        raise RejectedEvent(f"field 'attrs' must be an object, got {type(attrs).__name__}")
    return Event(raw["type"], raw["ts"], raw["key"], page, attrs)


class EventValidator:
    """Parses and checks events, counting rejections by reason.

    Timestamps may arrive somewhat out of order (that is what the watermark is for), but
    an event older than ``max_disorder_ms`` behind the newest accepted one is rejected:
    it most likely comes from a wrong clock and would reopen long-evicted state.
    """

    def __init__(self, max_disorder_ms: int = 3_600_000) -> None:
        if max_disorder_ms < 0:
            raise ValueError("[stream] max_disorder_ms must be >= 0")
        self.max_disorder_ms = max_disorder_ms
        self.max_ts = -1
        self.rejected: dict[str, int] = {}

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def parse_line(self, line: str | bytes) -> Event | None:
        """One JSONL line -> an accepted event, or None (counted and logged)."""
        try:
            # json.loads spends more time choosing the encoding than decoding a short line:
            # UTF-8 straight to the decoder, and json.loads (BOMs, UTF-16/32, its exact
            # errors) only for what that does not decode
            raw = _decode_json(line.decode() if isinstance(line, bytes) else line)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            try:
                raw = json.loads(line)
            except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
                self.reject(f"invalid JSON ({exc.__class__.__name__})")
                return None
        return self.check(raw)

    def check(self, raw: Any) -> Event | None:
        """A decoded object or an :class:`Event` -> the accepted event, or None."""
        # the common case in one expression: exact types (no subclasses, so no bool ts), all
        # fields present; anything else takes the checks that name what is wrong
        if type(raw) is dict:
            etype, ts, key, page = raw.get("type"), raw.get("ts"), raw.get("key"), raw.get("page", "")
            attrs = raw.get("attrs", _NO_ATTRS)
            if (type(etype) is str and etype and type(ts) is int and 0 <= ts < MAX_TS and type(key) is str
                    and type(page) is str and type(attrs) is dict
                    and (self.max_ts < 0 or ts >= self.max_ts - self.max_disorder_ms)):
                self.max_ts = max(self.max_ts, ts)
                return Event(etype, ts, key, page, {} if attrs is _NO_ATTRS else attrs)
        try:
            # an Event built in Python is re-checked field by field: nothing stops a caller
            # from putting a float in its ts
            event = event_from_dict(raw.to_dict() if isinstance(raw, Event) else raw)
            if self.max_ts >= 0 and event.ts < self.max_ts - self.max_disorder_ms:
                raise RejectedEvent(
                    "ts far out of order",
                    f"ts {event.ts} is more than {self.max_disorder_ms} ms behind the newest event {self.max_ts}",
                )
        except RejectedEvent as exc:
            self.reject(exc.reason, exc.detail)
            return None
        self.max_ts = max(self.max_ts, event.ts)
        return event

    def reject(self, reason: str, detail: str = "") -> None:
        """Count a rejection under ``reason``; ``detail`` (values, offsets) is only logged."""
        count = self.rejected.get(reason, 0) + 1
        self.rejected[reason] = count
        text = f"{reason} ({detail})" if detail else reason
        if count == 1:
            log.warning("[stream] rejected event: %s; later ones with this reason are logged at debug level", text)
        else:
            log.debug("[stream] rejected event: %s", text)
