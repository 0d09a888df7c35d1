"""Service groups (EAS): which member service takes the next request to a group.

A group's requests are spread over its member services by **smooth weighted round
robin**, nginx's algorithm: every pick, each member's *current* weight grows by its
weight and the member with the largest current weight is chosen (the first of equals),
which then gives back the sum of all weights.  Over any run of ``sum(weights)`` picks
every member is chosen exactly ``weight`` times, and the picks of a heavy member are
spread out rather than bunched (5/1/1 gives ``a a b a c a a``), with no randomness: a
canary with weight 10 beside a production service with weight 90 gets exactly 10 of
every 100 requests.

:class:`GroupBalancer` keeps one chooser per group and starts it afresh whenever the
control plane republishes the group with other members or weights.
"""

from __future__ import annotations

from collections.abc import Iterable

from openeas.gateway.routes import GroupRoute


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin over fixed ``(name, weight)`` pairs; names
    with a weight of 0 or less are never chosen."""

    __slots__ = ("_names", "_weights", "_current", "_total")

    def __init__(self, weighted: Iterable[tuple[str, int]]) -> None:
        pairs = [(name, weight) for name, weight in weighted if weight > 0]
        self._names = [name for name, _ in pairs]
        self._weights = [weight for _, weight in pairs]
        self._current = [0] * len(pairs)
        self._total = sum(self._weights)

    def next(self) -> str | None:
        """The next name; None when no name has a positive weight."""
        current, weights = self._current, self._weights
        best = -1
        for i, weight in enumerate(weights):
            current[i] += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= self._total
        return self._names[best]


class GroupBalancer:
    """The member service of a group that takes the next request (one chooser per
    group, on the gateway's event loop: no locks)."""

    def __init__(self) -> None:
        #: group name -> (the route its chooser was built from, the chooser)
        self._choosers: dict[str, tuple[GroupRoute, SmoothWeightedRoundRobin]] = {}

    def choose(self, group: GroupRoute) -> str | None:
        """The member for the next request to ``group``; None when no member has a
        weight above 0 (all standalone, or none ready)."""
        entry = self._choosers.get(group.name)
        if entry is None or entry[0] is not group:
            if entry is None or entry[0] != group:
                # new or changed (members, weights): its shares start afresh
                members = ((m.service, m.weight) for m in group.members)
                entry = (group, SmoothWeightedRoundRobin(members))
            else:  # republished unchanged: keep its place in the rotation
                entry = (group, entry[1])
            self._choosers[group.name] = entry
        return entry[1].next()

    def forget_except(self, live: Iterable[str]) -> None:
        """Drop the choosers of groups no longer published (bounded memory)."""
        keep = set(live)
        for name in [n for n in self._choosers if n not in keep]:
            del self._choosers[name]
