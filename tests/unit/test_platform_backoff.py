"""The restart backoff of the reconciler, on an injected clock."""

from __future__ import annotations

from openeas.platform.reconciler import Backoff


def _backoff() -> Backoff:
    return Backoff(base=1.0, cap=30.0, reset_after=600.0)


def test_a_streak_restarts_at_once_then_doubles_up_to_the_cap() -> None:
    backoff = _backoff()
    delays = [backoff.crashed(now=float(t)) for t in range(8)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_healthy_period_forgets_the_streak() -> None:
    backoff = _backoff()
    for t in range(6):
        backoff.crashed(now=float(t))
    backoff.ready(now=100.0)
    backoff.ready(now=300.0)  # still ready: the period started at 100
    assert backoff.crashed(now=700.0) == 0.0  # ready for 600 s: the first crash again
    assert backoff.crashed(now=701.0) == 1.0


def test_a_short_or_interrupted_ready_period_keeps_the_streak() -> None:
    backoff = _backoff()
    for t in range(3):
        backoff.crashed(now=float(t))
    backoff.ready(now=10.0)
    assert backoff.crashed(now=609.0) == 4.0  # ready 599 s only
    backoff.ready(now=620.0)
    backoff.not_ready()  # stopped answering ready for a while
    backoff.ready(now=1000.0)
    assert backoff.crashed(now=1300.0) == 8.0
