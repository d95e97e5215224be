"""Target expressions, version ranges, staged percentages and their stickiness."""

from __future__ import annotations

import pytest

from walle_deploy.errors import PolicyError
from walle_deploy.policy import bucket, first_stage, parse_stages, parse_target, version_key

DEVICE = {"region": "eu", "os": "android", "model": "px7", "app": "2.10.1", "group": "beta"}


@pytest.mark.parametrize("expr, expected", [
    ("all", True),
    ("", True),
    ("region=eu", True),
    ("region=us,ap", False),
    ("region=us,eu; os=android", True),
    ("os!=ios", True),
    ("os!=android,ios", False),
    ("app>=2.9", True),        # 2.10.1 > 2.9: numeric, not lexical
    ("app>=2.9; app<3", True),
    ("app<2.10", False),
    ("app<=2.10.1", True),
    ("app>2.10.1", False),
    ("model=px7; group=beta", True),
    ("missing=x", False),
    ("missing!=x", True),
    ("device=d1,d2", True),
    ("device=d2,d3", False),
])
def test_target_matching(expr: str, expected: bool) -> None:
    assert parse_target(expr).matches("d1", DEVICE) is expected


@pytest.mark.parametrize("expr", ["region", "region=", "app>=1,2", "=x", "region~eu"])
def test_bad_targets_raise_policy_error(expr: str) -> None:
    with pytest.raises(PolicyError):
        parse_target(expr)


def test_version_key_orders_like_versions() -> None:
    ordered = ["1.0.rc1", "1.0.0", "1.2", "1.10", "2"]
    assert sorted(ordered, key=version_key) == ordered


def test_stage_parsing() -> None:
    stages = parse_stages("beta=1@group=beta,gray=10,full=100")
    assert [(s.name, s.percent, s.target) for s in stages] == [
        ("beta", 1.0, "group=beta"), ("gray", 10.0, "all"), ("full", 100.0, "all")]
    assert [s.name for s in parse_stages("1,10,50,100")] == ["1%", "10%", "50%", "100%"]
    assert parse_stages("a=5,b=50", {"a": "region=eu,us"})[0].target == "region=eu,us"


@pytest.mark.parametrize("text", ["", "abc", "150", "-1", "a=1,a=2", "50,10"])
def test_bad_stages_raise_policy_error(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_stages(text)


def test_buckets_are_deterministic_and_roughly_uniform() -> None:
    ids = [f"dev-{i}" for i in range(20_000)]
    assert [bucket("t", d) for d in ids[:50]] == [bucket("t", d) for d in ids[:50]]
    share = sum(bucket("t", d) < 10 for d in ids) / len(ids)
    assert 0.09 < share < 0.11  # 10 % stage holds ~10 % of devices (binomial sd 0.2 %)
    assert bucket("t", "dev-1") != bucket("other-task", "dev-1")


def test_stage_membership_is_sticky() -> None:
    """A device in an early stage is in every later stage; the cohorts only grow."""
    stages = parse_stages("1,10,50,100")
    ids = [f"dev-{i}" for i in range(5_000)]
    first = {d: first_stage(stages, "task", d, {}) for d in ids}
    for k in range(len(stages)):
        reached_k = {d for d, s in first.items() if s is not None and s <= k}
        exact = {d for d in ids if bucket("task", d) < stages[k].percent}
        assert reached_k == exact
        if k:
            previous = {d for d, s in first.items() if s is not None and s <= k - 1}
            assert previous <= reached_k
    assert all(s is not None for s in first.values())  # 100 % reaches everyone


def test_stage_targets_restrict_early_stages() -> None:
    stages = parse_stages("beta=100@group=beta,full=100")
    assert first_stage(stages, "t", "d1", {"group": "beta"}) == 0
    assert first_stage(stages, "t", "d1", {"group": "prod"}) == 1
