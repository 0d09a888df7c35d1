"""Service groups (EAS): the share of the group's traffic each member gets.

:func:`effective_weights` is the rule (docs/groups.md), a pure function: the reconciler
publishes its result as the group's :class:`~openeas.gateway.routes.GroupRoute` (the
gateway picks members by smooth weighted round robin over these weights) and
``eascmd group desc`` shows it as percentages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from openeas.gateway.routes import GroupMember
from openeas.platform.status import TrafficMode, TrafficState

#: A member's weight in TrafficMode ``customized`` while its Weight is -1 (unset): the
#: members without a Weight share equally.
UNSET_WEIGHT = 100
#: A member's ``Weight`` bounds (EAS); -1 means unset.
MIN_WEIGHT, MAX_WEIGHT = -1, 1000


@dataclass(frozen=True)
class MemberState:
    """What the rule needs of one member service."""

    service: str
    state: TrafficState
    #: its ``Weight`` (-1: unset)
    weight: int
    #: its instances that take requests now (those of its published route)
    ready: int


def _weight(mode: TrafficMode, member: MemberState) -> int:
    if member.state == TrafficState.STANDALONE or member.ready <= 0:
        return 0
    if mode == TrafficMode.AUTO:
        return member.ready
    return UNSET_WEIGHT if member.weight < 0 else member.weight


def effective_weights(mode: TrafficMode, members: Iterable[MemberState]) -> tuple[GroupMember, ...]:
    """Every member with its effective weight, by service name.

    0 for a ``standalone`` member or one without a ready instance; else its ready
    instances (``auto``) or its Weight (``customized``, unset counting as 100).  When no
    member gets a weight above 0, the ``grouping`` ones get 1 each: a request then reaches
    a member and gets that member's own answer (held while it scales up from zero, or
    its 503) instead of the group's.
    """
    ordered = sorted(members, key=lambda m: m.service)
    weights = [_weight(mode, m) for m in ordered]
    if not any(weights):
        weights = [int(m.state == TrafficState.GROUPING) for m in ordered]
    return tuple(GroupMember(m.service, w) for m, w in zip(ordered, weights, strict=True))


def shares(members: Iterable[GroupMember]) -> dict[str, float]:
    """Each member's share of the group's requests in percent (0 for all when none has
    a weight)."""
    members = tuple(members)
    total = sum(m.weight for m in members)
    return {m.service: (100.0 * m.weight / total if total else 0.0) for m in members}
