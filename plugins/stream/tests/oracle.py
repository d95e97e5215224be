"""A deliberately naive matcher: the semantics of walle_stream.pattern written out
directly, trigger by trigger, by dynamic programming over each key's full history. Slow
and obviously correct; the shared automaton must agree with it event for event."""

from __future__ import annotations

from walle_stream.pattern import STRICT, Trigger


class OracleMatcher:
    def __init__(self, triggers: list[Trigger]) -> None:
        self.triggers = list(triggers)
        self.history: dict[str, list] = {}  # key -> [(event, clock, global index)]
        self.last_fire: dict[tuple[str, str], int] = {}  # (key, trigger) -> index of firing event
        self.count = 0  # events seen, all keys
        self.added: dict[str, int] = {t.name: 0 for t in triggers}

    def add(self, trigger: Trigger) -> None:
        """A trigger added now only sees events from now on."""
        self.triggers.append(trigger)
        self.added[trigger.name] = self.count

    def remove(self, name: str) -> None:
        self.triggers = [t for t in self.triggers if t.name != name]

    def process(self, key: str, event) -> list[str]:
        hist = self.history.setdefault(key, [])
        clock = max(event.ts, hist[-1][1]) if hist else event.ts
        self.count += 1
        hist.append((event, clock, self.count))
        j = len(hist) - 1
        fired = []
        for trigger in self.triggers:
            low = self.last_fire.get((key, trigger.name), -1) + 1
            while low <= j and hist[low][2] <= self.added[trigger.name]:
                low += 1
            start = self._best_start(trigger, hist, low, j)
            if start is not None and clock - hist[start][1] <= trigger.within_ms:
                self.last_fire[(key, trigger.name)] = j
                fired.append(trigger.name)
        return sorted(fired)

    @staticmethod
    def _best_start(trigger: Trigger, hist: list, low: int, j: int) -> int | None:
        """Latest start of a full match ending exactly at j using only positions >= low."""
        elements = trigger.elements
        # best[p] = latest start of a match of elements[0..i] ending exactly at p
        best: list[int | None] = [p if elements[0].accepts(hist[p][0]) else None for p in range(len(hist))]
        for p in range(low):
            best[p] = None
        for i in range(1, len(elements)):
            element = elements[i]
            new: list[int | None] = [None] * len(hist)
            running = None  # max of best[q] for q < p
            for p in range(low, len(hist)):
                if element.accepts(hist[p][0]):
                    if element.contiguity == STRICT:
                        new[p] = best[p - 1] if p - 1 >= low else None
                    else:
                        new[p] = running
                if best[p] is not None and (running is None or best[p] > running):
                    running = best[p]
            best = new
        return best[j]
