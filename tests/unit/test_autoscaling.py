"""The autoscaler spec (both EAS forms, -D overrides, errors) and the pure scaling policy,
on synthetic metric series with injected time."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openeas.platform.elastic.autoscaler import (
    AutoscalerSpec,
    Behavior,
    MetricName,
    ScaleStrategy,
    apply_overrides,
    parse_autoscaler,
)
from openeas.platform.elastic.policy import (
    MAX_RECOMMENDATIONS,
    Decision,
    Metrics,
    MetricsHistory,
    Recommendations,
    Sample,
    Window,
    bounds,
    decide,
)
from openeas.platform.errors import SpecError

#: The issue's document.
DOC: dict[str, Any] = {
    "min": 1,
    "max": 8,
    "scaleStrategies": [
        {"metricName": "qps", "threshold": 100},
        {"metricName": "cpu", "threshold": 80},
    ],
    "behavior": {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 300},
        "onZero": {"scaleDownGracePeriodSeconds": 600, "scaleUpActivationReplicas": 1},
    },
}


def spec(
    low: int = 1,
    high: int = 8,
    qps: float | None = 10,
    cpu: float | None = None,
    up: int = 0,
    down: int = 0,
    grace: int = 600,
    activation: int = 1,
) -> AutoscalerSpec:
    strategies = tuple(
        ScaleStrategy(metric, threshold)
        for metric, threshold in ((MetricName.QPS, qps), (MetricName.CPU, cpu))
        if threshold is not None
    )
    return AutoscalerSpec(low, high, strategies, Behavior(up, down, grace, activation))


def errors_of(doc: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_autoscaler(doc)
    return {e.field: e.reason for e in info.value.errors}


# -- the spec -----------------------------------------------------------------------------


def test_the_issues_document_parses_and_round_trips() -> None:
    parsed = parse_autoscaler(DOC)
    assert parsed == spec(1, 8, qps=100, cpu=80, up=0, down=300, grace=600)
    assert parse_autoscaler(parsed.to_json()) == parsed
    assert parsed.to_json() == DOC
    assert type(parsed.to_json()["scaleStrategies"][0]["threshold"]) is int  # 100, not 100.0


def test_behavior_defaults_are_eas_defaults() -> None:
    parsed = parse_autoscaler({"min": 1, "max": 3, "scaleStrategies": [DOC["scaleStrategies"][0]]})
    assert parsed.behavior == Behavior(
        scale_up_window=0, scale_down_window=300, scale_down_grace=600, activation_replicas=1
    )


def test_the_older_eas_form_is_accepted() -> None:
    parsed = parse_autoscaler({"Min": 0, "Max": 5, "Strategies": {"qps": 10, "cpu": 70}})
    assert parsed == spec(0, 5, qps=10, cpu=70, down=300)


def test_older_form_errors_name_its_fields() -> None:
    problems = errors_of({"Min": 4, "Max": 2, "Strategies": {"gpu": 1, "qps": 0}})
    assert problems["autoscaler.Min"] == "must be <= Max (2), got 4"
    assert "unsupported metric 'gpu'" in problems["autoscaler.Strategies.gpu"]
    assert "greater than 0" in problems["autoscaler.Strategies.qps"]


def test_mixing_the_two_forms_is_refused() -> None:
    assert "mixes the current form" in errors_of({"min": 1, "Max": 2})["autoscaler"]


BAD: list[tuple[str, Any, str, str]] = [
    ("min > max", {"min": 5, "max": 2}, "autoscaler.min", "must be <= max (2), got 5"),
    ("negative min", {"min": -1}, "autoscaler.min", "between 0 and 100"),
    ("max 0", {"max": 0}, "autoscaler.max", "between 1 and 100"),
    ("min missing", {"min": None}, "autoscaler.min", "required field is missing"),
    ("min as boolean", {"min": True}, "autoscaler.min", "must be an integer, got a boolean"),
    ("min as fraction", {"min": 1.5}, "autoscaler.min", "must be an integer, got a number"),
    (
        "unknown metric",
        {"scaleStrategies": [{"metricName": "gpu", "threshold": 50}]},
        "autoscaler.scaleStrategies[0].metricName",
        "unsupported metric 'gpu'; OpenEAS measures qps, cpu",
    ),
    (
        "duplicate metric",
        {"scaleStrategies": [{"metricName": "qps", "threshold": 5}] * 2},
        "autoscaler.scaleStrategies[1].metricName",
        "'qps' appears twice",
    ),
    (
        "zero threshold",
        {"scaleStrategies": [{"metricName": "qps", "threshold": 0}]},
        "autoscaler.scaleStrategies[0].threshold",
        "greater than 0",
    ),
    (
        "cpu above 100%",
        {"scaleStrategies": [{"metricName": "cpu", "threshold": 150}]},
        "autoscaler.scaleStrategies[0].threshold",
        "at most 100",
    ),
    (
        "another service's metric",
        {"scaleStrategies": [{"metricName": "qps", "threshold": 5, "service": "other"}]},
        "autoscaler.scaleStrategies[0].service",
        "not supported",
    ),
    ("no strategies", {"scaleStrategies": []}, "autoscaler.scaleStrategies", "at least one"),
    ("strategy not an object", {"scaleStrategies": [3]}, "autoscaler.scaleStrategies[0]", "object"),
    (
        "negative scale-down window",
        {"behavior": {"scaleDown": {"stabilizationWindowSeconds": -5}}},
        "autoscaler.behavior.scaleDown.stabilizationWindowSeconds",
        "between 0 and 3600, got -5",
    ),
    (
        "negative grace period",
        {"behavior": {"onZero": {"scaleDownGracePeriodSeconds": -1}}},
        "autoscaler.behavior.onZero.scaleDownGracePeriodSeconds",
        "between 0 and 86400",
    ),
    (
        "activation above max",
        {"behavior": {"onZero": {"scaleUpActivationReplicas": 9}}},
        "autoscaler.behavior.onZero.scaleUpActivationReplicas",
        "must be <= max (8), got 9",
    ),
    (
        "unknown behavior key",
        {"behavior": {"scaleSideways": {}}},
        "autoscaler.behavior.scaleSideways",
        "unknown field",
    ),
    ("unknown top-level key", {"minimum": 1}, "autoscaler.minimum", "unknown field"),
]


@pytest.mark.parametrize(
    ("change", "field", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_autoscaler_fields_are_named(change: dict[str, Any], field: str, reason: str) -> None:
    doc = copy.deepcopy(DOC)
    doc.update(change)
    problems = errors_of(doc)
    assert field in problems, problems
    assert reason in problems[field]


def test_every_problem_is_reported_at_once() -> None:
    problems = errors_of({"min": 9, "max": 2, "scaleStrategies": [{"metricName": "gpu"}]})
    assert set(problems) == {"autoscaler.min", "autoscaler.scaleStrategies[0].metricName"}


def test_a_non_object_is_refused() -> None:
    assert errors_of([1, 2]) == {"autoscaler": "must be a JSON object, got an array"}


def test_overrides_build_a_spec_as_eascmd_takes_them() -> None:
    built = apply_overrides(None, ["min=1", "max=8", "strategies.qps=100", "strategies.cpu=80"])
    assert built == spec(1, 8, qps=100, cpu=80, down=300)


def test_overrides_edit_an_existing_spec() -> None:
    base = parse_autoscaler(DOC)
    edited = apply_overrides(
        base,
        ["max=4", "strategies.qps=50", "behavior.scaleDown.stabilizationWindowSeconds=60"],
    )
    assert edited.max == 4
    assert edited.strategies == (
        ScaleStrategy(MetricName.CPU, 80.0),
        ScaleStrategy(MetricName.QPS, 50.0),
    )
    assert edited.behavior.scale_down_window == 60
    assert base.max == 8  # frozen: the base is unchanged


@pytest.mark.parametrize(
    ("assignment", "field", "reason"),
    [
        ("strategies.gpu=50", "autoscaler.strategies.gpu", "unsupported metric 'gpu'"),
        ("speed=3", "autoscaler.speed", "unknown key; -D takes min, max, strategies.qps"),
        ("min", "autoscaler", "expected key=value, got 'min'"),
        ("min=lots", "autoscaler.min", "must be an integer, got a string"),
        ("max=0", "autoscaler.max", "between 1 and 100"),
        ("min=9", "autoscaler.min", "must be <= max (8), got 9"),
    ],
)
def test_bad_overrides_name_the_field(assignment: str, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(parse_autoscaler(DOC), [assignment])
    problems = {e.field: e.reason for e in info.value.errors}
    assert field in problems, problems
    assert reason in problems[field]


def test_overrides_without_a_base_need_the_required_fields() -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(None, ["strategies.qps=10"])
    assert {e.field for e in info.value.errors} == {"autoscaler.min", "autoscaler.max"}


# -- the metrics history ------------------------------------------------------------------


def test_history_is_a_bounded_ring_per_service() -> None:
    history = MetricsHistory(capacity=3)
    for t in range(10):
        history.add("a", Sample(float(t), qps=1.0 if t == 4 else 0.0))
    history.add("b", Sample(0.0))
    metrics = history.metrics("a")
    assert [s.time for s in metrics.samples] == [7.0, 8.0, 9.0]
    assert metrics.since == 0.0
    assert metrics.last_traffic == 4.0
    assert metrics.idle_for(20.0) == 16.0
    assert history.metrics("b").idle_for(5.0) == 5.0  # no traffic ever: from the first sample
    history.forget("a")
    assert history.metrics("a") == Metrics()
    assert list(history) == ["b"]


def test_history_refuses_samples_out_of_order() -> None:
    history = MetricsHistory()
    history.add("a", Sample(5.0))
    with pytest.raises(ValueError, match="older than the latest"):
        history.add("a", Sample(4.0))


def test_recommendations_merge_runs_and_forget_past_the_horizon() -> None:
    recs = Recommendations()
    for t in range(10_000):
        recs = recs.add(float(t), 3, horizon=60.0)
    assert len(recs.entries) == 1 and recs.since == 0.0
    for t in range(10_000, 20_000):
        recs = recs.add(float(t), t % 2, horizon=1e9)
    assert len(recs.entries) == MAX_RECOMMENDATIONS


# -- the policy ---------------------------------------------------------------------------


class Driver:
    """Feeds a series into the policy as the reconciler will, carrying its state."""

    def __init__(self, autoscaler: AutoscalerSpec, current: int = 1) -> None:
        self.spec = autoscaler
        self.current = current
        self.history = MetricsHistory()
        self.recs = Recommendations()
        self.cron: int | None = None

    def tick(self, t: float, qps: float = 0.0, cpu: float = 0.0, in_flight: int = 0) -> Decision:
        self.history.add("svc", Sample(t, qps=qps, cpu=cpu, in_flight=in_flight))
        decision = decide(
            self.spec, self.current, self.history.metrics("svc"), self.recs, t, self.cron
        )
        self.recs = decision.recommendations
        self.current = decision.desired
        return decision


def run_load(driver: Driver, times: range, rate: float) -> list[int]:
    """Drive a service-wide request rate (spread over the current instances)."""
    counts = []
    for t in times:
        per_instance = rate / driver.current if driver.current else 0.0
        counts.append(driver.tick(float(t), qps=per_instance).desired)
    return counts


def test_a_qps_step_scales_one_to_n_as_eas_computes_it() -> None:
    driver = Driver(spec(1, 8, qps=10), current=2)
    decision = driver.tick(0.0, qps=23.0)  # EAS's example: ceil(2 * 23 / 10) = 5
    assert (decision.desired, decision.window) == (5, Window.SCALE_UP)
    assert decision.strategies[0].replicas == 5
    assert "qps 23/instance (threshold 10) -> 5" in decision.reason
    assert decision.reason.endswith("2 -> 5")


def test_steady_load_settles_at_the_needed_count() -> None:
    driver = Driver(spec(1, 8, qps=10), current=1)
    counts = run_load(driver, range(5), rate=45.0)
    assert counts[0] == 5  # ceil(1 * 45 / 10)
    assert counts[-1] == 5  # 9 per instance: within the band, no flapping


@pytest.mark.parametrize(("qps", "desired"), [(10.9, 4), (11.0, 4), (9.0, 4), (11.5, 5), (7.0, 3)])
def test_the_tolerance_band_holds_within_ten_percent(qps: float, desired: int) -> None:
    decision = Driver(spec(1, 8, qps=10), current=4).tick(0.0, qps=qps)
    assert decision.desired == desired
    assert decision.strategies[0].tolerated is (9.0 <= qps <= 11.0)


def test_cpu_strategy() -> None:
    decision = Driver(spec(1, 8, qps=None, cpu=50), current=2).tick(0.0, cpu=90.0)
    assert decision.desired == 4  # ceil(2 * 90 / 50)
    assert "cpu 90% (threshold 50) -> 4" in decision.reason


def test_the_largest_strategy_wins() -> None:
    both = spec(1, 8, qps=10, cpu=50)
    decision = Driver(both, current=2).tick(0.0, qps=31.0, cpu=90.0)
    assert [s.replicas for s in decision.strategies] == [7, 4]
    assert (decision.recommendation, decision.desired) == (7, 7)
    decision = Driver(both, current=2).tick(0.0, qps=16.0, cpu=130.0 / 2)
    assert [s.replicas for s in decision.strategies] == [4, 3]
    decision = Driver(both, current=2).tick(0.0, qps=12.0, cpu=95.0)
    assert [s.replicas for s in decision.strategies] == [3, 4]
    assert (decision.recommendation, decision.desired) == (4, 4)


def test_scale_up_waits_out_its_window() -> None:
    driver = Driver(spec(1, 8, qps=10, up=30, down=0), current=1)
    assert driver.tick(0.0, qps=0.0).desired == 1
    # A spike shorter than the window changes nothing...
    assert driver.tick(10.0, qps=50.0).desired == 1
    assert driver.tick(11.0, qps=5.0).desired == 1
    # ...a sustained one scales up once the whole window recommends more.
    counts = [driver.tick(float(t), qps=50.0).desired for t in range(20, 45)]
    assert counts[: 42 - 20] == [1] * (42 - 20)
    assert counts[-1] == 5
    assert driver.tick(45.0, qps=10.0).window is None


def test_scale_up_right_after_start_needs_the_full_window() -> None:
    driver = Driver(spec(1, 8, qps=10, up=30), current=1)
    assert driver.tick(0.0, qps=50.0).desired == 1  # no history yet: current stands in
    assert driver.tick(29.0, qps=50.0).desired == 1
    assert driver.tick(30.0, qps=50.0).desired == 5


def test_scale_down_uses_the_highest_recommendation_in_its_window() -> None:
    driver = Driver(spec(1, 8, qps=10, down=60), current=6)
    assert driver.tick(0.0, qps=10.0).desired == 6
    assert driver.tick(60.0, qps=10.0).desired == 6
    # Load drops: the window still holds the recommendation of 6.
    decision = driver.tick(61.0, qps=2.0)
    assert (decision.desired, decision.window) == (6, Window.SCALE_DOWN)
    assert "scaleDown window 60s: highest recommendation 6" in decision.reason
    # A brief rise inside the window to 4 bounds the scale-down once 6 left the window.
    driver.tick(80.0, qps=4.0)  # ceil(6 * 0.4) = 3
    assert driver.tick(121.0, qps=1.0).desired == 3
    assert driver.tick(141.0, qps=1.0).desired == 1


def test_clamped_to_min_and_max() -> None:
    assert Driver(spec(2, 4, qps=10), current=3).tick(0.0, qps=100.0).desired == 4
    decision = Driver(spec(2, 4, qps=10), current=3).tick(0.0, qps=0.5)
    assert decision.desired == 2
    assert "clamped to [2, 4]" in decision.reason


def test_no_metrics_keeps_the_count_within_bounds() -> None:
    decision = decide(spec(2, 4), 6, Metrics(), Recommendations(), 0.0)
    assert decision.desired == 4
    assert decision.reason.startswith("no metrics yet")


def test_min_zero_without_traffic_scales_to_zero_after_the_grace_period() -> None:
    driver = Driver(spec(0, 4, qps=10, grace=60), current=2)
    driver.tick(0.0, qps=3.0)
    counts = [driver.tick(float(t)).desired for t in range(1, 60)]
    assert 0 not in counts  # low traffic scales down, but never to zero before the grace
    assert counts[-1] == 1
    decision = driver.tick(60.0)
    assert (decision.desired, decision.window) == (0, Window.ON_ZERO)
    assert "no traffic for 60s (onZero grace 60s)" in decision.reason


def test_traffic_restarts_the_grace_period() -> None:
    driver = Driver(spec(0, 4, qps=10, grace=60), current=1)
    driver.tick(0.0, qps=0.0)
    driver.tick(50.0, qps=0.0, in_flight=1)
    assert driver.tick(100.0).desired == 1
    assert driver.tick(110.0).desired == 0


def test_min_above_zero_never_scales_to_zero() -> None:
    driver = Driver(spec(1, 4, qps=10, grace=0), current=1)
    assert [driver.tick(float(t)).desired for t in range(0, 100, 10)] == [1] * 10


def test_a_held_request_activates_from_zero() -> None:
    driver = Driver(spec(0, 4, qps=10, grace=60, activation=2), current=0)
    assert driver.tick(0.0).desired == 0
    decision = driver.tick(1.0, in_flight=3)
    assert (decision.desired, decision.window) == (2, Window.ACTIVATION)
    assert "3 request(s) waiting at zero instances: activating 2" in decision.reason


def test_activation_honours_the_floor_and_ceiling() -> None:
    autoscaler = spec(0, 4, qps=10, activation=1)
    busy = Metrics((Sample(0.0, in_flight=1),), 0.0, 0.0)
    assert decide(autoscaler, 0, busy, Recommendations(), 0.0, cron_target=3).desired == 3
    assert decide(autoscaler, 0, busy, Recommendations(), 0.0, cron_target=6).desired == 6
    idle = Metrics((Sample(0.0),), 0.0, None)
    assert decide(autoscaler, 0, idle, Recommendations(), 0.0, cron_target=2).desired == 2


def test_cron_target_is_a_floor_for_the_autoscaler() -> None:
    assert bounds(spec(1, 8)) == (1, 8)
    assert bounds(spec(1, 8), 4) == (4, 8)
    assert bounds(spec(2, 8), 1) == (2, 8)  # below min: min stays the floor
    assert bounds(spec(1, 8), 10) == (10, 10)  # above max: the schedule wins
    driver = Driver(spec(1, 8, qps=10, down=0), current=1)
    driver.cron = 4
    decision = driver.tick(0.0, qps=1.0)
    assert (decision.desired, decision.floor) == (4, 4)  # at once, no window for a floor
    assert driver.tick(1.0, qps=60.0 / 4).desired == 6  # metrics may still add more
    driver.cron = 1
    assert driver.tick(2.0, qps=1.0).desired == 1


def test_lowering_the_cron_floor_scales_down_within_the_down_window() -> None:
    quiet = Driver(spec(1, 8, qps=10, down=300), current=1)
    quiet.cron = 4
    assert [quiet.tick(float(t), qps=1.0).desired for t in (0, 400)] == [4, 4]
    quiet.cron = 1
    assert quiet.tick(401.0, qps=1.0).desired == 1  # quiet all window long: at once
    busy = Driver(spec(1, 8, qps=10, down=300), current=1)
    busy.cron = 4
    busy.tick(0.0, qps=1.0)
    busy.tick(350.0, qps=12.0)  # busier than 4 can take: recommends 5
    busy.cron = 1
    assert busy.tick(400.0, qps=1.0).desired == 5
    assert busy.tick(651.0, qps=1.0).desired == 1


def test_a_cron_floor_prevents_scale_to_zero() -> None:
    driver = Driver(spec(0, 4, qps=10, grace=0), current=2)
    driver.cron = 2
    assert driver.tick(100.0).desired == 2
    driver.cron = 0
    assert driver.tick(101.0).desired == 0
