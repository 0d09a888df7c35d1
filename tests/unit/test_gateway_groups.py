"""Smooth weighted round robin (nginx's) and the per-group chooser of the gateway."""

from __future__ import annotations

import collections

from openeas.gateway.groups import GroupBalancer, SmoothWeightedRoundRobin
from openeas.gateway.routes import GroupMember, GroupRoute


def _picks(chooser: SmoothWeightedRoundRobin, n: int) -> list[str | None]:
    return [chooser.next() for _ in range(n)]


def _group(*weights: tuple[str, int], name: str = "g") -> GroupRoute:
    return GroupRoute(name, "tok", tuple(GroupMember(s, w) for s, w in weights))


def test_shares_are_exact_over_every_cycle_of_the_total_weight() -> None:
    chooser = SmoothWeightedRoundRobin([("prod", 90), ("canary", 10)])
    first = _picks(chooser, 100)
    assert collections.Counter(first) == {"prod": 90, "canary": 10}
    # and again, the same sequence: deterministic, no drift
    assert _picks(chooser, 100) == first
    three = SmoothWeightedRoundRobin([("a", 50), ("b", 30), ("c", 20)])
    assert collections.Counter(_picks(three, 100)) == {"a": 50, "b": 30, "c": 20}
    assert collections.Counter(_picks(three, 10)) == {"a": 5, "b": 3, "c": 2}


def test_picks_are_spread_not_bunched() -> None:
    # nginx's own example: 5/1/1 is a a b a c a a, not a a a a a b c
    assert _picks(SmoothWeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)]), 7) == list("aabacaa")
    canary = [
        i
        for i, name in enumerate(_picks(SmoothWeightedRoundRobin([("p", 9), ("c", 1)]), 30))
        if name == "c"
    ]
    assert [b - a for a, b in zip(canary, canary[1:], strict=False)] == [10, 10]


def test_members_of_weight_zero_or_less_are_never_picked() -> None:
    chooser = SmoothWeightedRoundRobin([("a", 0), ("b", 3), ("c", -1)])
    assert set(_picks(chooser, 50)) == {"b"}
    assert SmoothWeightedRoundRobin([("a", 0)]).next() is None
    assert SmoothWeightedRoundRobin([]).next() is None


def test_equal_weights_take_turns_in_member_order() -> None:
    assert _picks(SmoothWeightedRoundRobin([("a", 1), ("b", 1), ("c", 1)]), 6) == list("abcabc")


def test_the_balancer_keeps_one_rotation_per_group() -> None:
    balancer = GroupBalancer()
    one, two = _group(("a", 1), ("b", 1), name="one"), _group(("x", 1), ("y", 1), name="two")
    assert [balancer.choose(one), balancer.choose(two), balancer.choose(one)] == ["a", "x", "b"]
    # republished unchanged (an equal, new object): the rotation goes on
    assert balancer.choose(_group(("a", 1), ("b", 1), name="one")) == "a"
    assert balancer.choose(one) == "b"


def test_changed_weights_take_effect_at_once_from_a_fresh_rotation() -> None:
    balancer = GroupBalancer()
    before = _group(("prod", 90), ("canary", 10))
    assert collections.Counter(balancer.choose(before) for _ in range(37))["canary"] == 4
    after = _group(("prod", 1), ("canary", 1))
    assert [balancer.choose(after) for _ in range(4)] == ["prod", "canary"] * 2
    pulled = _group(("prod", 1), ("canary", 0))  # the canary made standalone
    assert {balancer.choose(pulled) for _ in range(10)} == {"prod"}
    assert balancer.choose(_group(("prod", 0), ("canary", 0))) is None


def test_the_balancer_forgets_groups_no_longer_published() -> None:
    balancer = GroupBalancer()
    group = _group(("a", 1), ("b", 1))
    assert balancer.choose(group) == "a"
    balancer.forget_except(["other"])
    assert balancer.choose(group) == "a"  # started afresh
    balancer.forget_except(["g"])
    assert balancer.choose(group) == "b"  # kept
