"""Release policies: which devices a release targets and in which stage each one joins.

Target expression: clauses joined by ``;``, all of which must hold. ``all`` (or an empty
expression) matches every device.

    region=eu,us            attribute equals one of the values
    os!=ios                 attribute differs from every value
    app>=2.1; app<3         version comparison (numeric dotted parts compare as numbers)
    device=d1,d2,d3         explicit device list (``device`` is the device id)

Stages are cumulative percentages (``1,10,50,100`` or named ``beta=1,gray=10,full=100``),
optionally with an extra target for a stage (``simulation=100@group=sim``). A device's
position in a rollout is ``bucket(salt, device_id)``, a uniform number in [0, 100) from
SHA-256; it is in stage *k* once ``bucket < percent_k`` for some stage up to *k*. Because the
bucket never changes and percentages only grow, a device in the 10 % stage is in every later
stage, and the same salt (the task name) keeps the early cohort stable across a rollout.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from walle_deploy.errors import PolicyError

Attrs = Mapping[str, str]
_CLAUSE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")
_COMPARE: dict[str, Callable[[object, object], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
DEVICE_KEY = "device"


def version_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for dotted versions: numeric parts as numbers (so 2.10 > 2.9), other parts as
    text ranked below numbers (so 2.0.rc1 < 2.0.0)."""
    parts = re.split(r"[.\-+_]", text.strip())
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


@dataclass(frozen=True)
class Clause:
    key: str
    op: str
    values: tuple[str, ...]

    def matches(self, device_id: str, attrs: Attrs) -> bool:
        value = device_id if self.key == DEVICE_KEY else attrs.get(self.key)
        if self.op in ("=", "=="):
            return value is not None and value in self.values
        if self.op == "!=":
            return value is None or value not in self.values
        if value is None:
            return False
        return _COMPARE[self.op](version_key(value), version_key(self.values[0]))


@dataclass(frozen=True)
class Target:
    text: str
    clauses: tuple[Clause, ...]

    def matches(self, device_id: str, attrs: Attrs) -> bool:
        return all(c.matches(device_id, attrs) for c in self.clauses)

    def values_of(self, key: str) -> tuple[str, ...] | None:
        """The values an ``=`` clause on ``key`` allows, or None when ``key`` is unconstrained."""
        for c in self.clauses:
            if c.key == key and c.op in ("=", "=="):
                return c.values
        return None


@lru_cache(maxsize=1024)
def parse_target(text: str) -> Target:
    text = (text or "").strip()
    if text in ("", "all", "*"):
        return Target("all", ())
    clauses = []
    for raw in text.split(";"):
        if not raw.strip():
            continue
        m = _CLAUSE_RE.match(raw)
        if not m:
            raise PolicyError(f"[deploy] target clause {raw.strip()!r}: expected KEY=V1,V2 / KEY!=V / KEY>=VERSION")
        key, op, rhs = m.groups()
        values = tuple(v.strip() for v in rhs.split(",") if v.strip())
        if not values:
            raise PolicyError(f"[deploy] target clause {raw.strip()!r} has no value")
        if op in _COMPARE and len(values) != 1:
            raise PolicyError(f"[deploy] target clause {raw.strip()!r}: a comparison takes one version")
        clauses.append(Clause(key, op, values))
    return Target(text, tuple(clauses))


@dataclass(frozen=True)
class Stage:
    name: str
    percent: float
    target: str = "all"


def parse_stages(text: str, stage_targets: Mapping[str, str] | None = None) -> tuple[Stage, ...]:
    """``1,10,50,100`` or ``beta=1,gray=10,full=100``; ``NAME=PCT@EXPR`` adds a stage target
    (only for expressions without commas; ``stage_targets`` maps names to any expression)."""
    stages = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, rest = item.partition("=") if "=" in item.split("@")[0] else ("", "", item)
        pct_text, _, target = rest.partition("@")
        try:
            percent = float(pct_text)
        except ValueError:
            raise PolicyError(f"[deploy] stage {item!r}: percentage {pct_text!r} is not a number") from None
        if not 0 <= percent <= 100:
            raise PolicyError(f"[deploy] stage {item!r}: percentage must be within 0..100")
        name = name.strip() or f"{percent:g}%"
        stages.append(Stage(name, percent, target.strip() or "all"))
    if not stages:
        raise PolicyError("[deploy] at least one stage is required")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PolicyError(f"[deploy] stage names must be unique: {names}")
    for a, b in itertools.pairwise(stages):
        if b.percent < a.percent and b.target == a.target == "all":
            raise PolicyError(f"[deploy] stage {b.name!r} ({b.percent:g}%) shrinks the rollout of {a.name!r}")
    for name, expr in (stage_targets or {}).items():
        if name not in names:
            raise PolicyError(f"[deploy] stage target for unknown stage {name!r} (stages: {names})")
        stages[names.index(name)] = Stage(name, stages[names.index(name)].percent, expr)
    for s in stages:
        parse_target(s.target)
    return tuple(stages)


def bucket(salt: str, device_id: str) -> float:
    """Deterministic position of a device in [0, 100) with 0.0001 % resolution."""
    h = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % 1_000_000 / 10_000


def first_stage(stages: tuple[Stage, ...], salt: str, device_id: str, attrs: Attrs) -> int | None:
    """Index of the first stage that includes the device, or None if no stage ever does."""
    b = bucket(salt, device_id)
    for i, stage in enumerate(stages):
        if b < stage.percent and parse_target(stage.target).matches(device_id, attrs):
            return i
    return None
