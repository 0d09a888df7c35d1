"""Scheduled scaling: the cronscaler document, and the target at injected times (time
zones, ExcludeDates, not retroactive, several jobs), and the cron floor with an autoscaler."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from openeas.platform.elastic.autoscaler import parse_autoscaler
from openeas.platform.elastic.cron import (
    CronScalerSpec,
    ScaleJob,
    evaluate,
    next_firing,
    parse_cronscaler,
)
from openeas.platform.elastic.policy import Metrics, Recommendations, Sample, decide
from openeas.platform.errors import SpecError

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: The issue's document.
DOC: dict[str, Any] = {
    "ExcludeDates": ["* * * * * 6,0"],
    "ScaleJobs": [
        {"Name": "morning", "Schedule": "0 0 8 * * *", "TargetSize": 4, "TimeZone": "Asia/Shanghai"}
    ],
}
#: 2026-03-06 is a Friday; 03-07/08 the weekend; 03-09 a Monday.
FRIDAY, SATURDAY, MONDAY = 6, 7, 9


def shanghai(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=SHANGHAI)


def errors_of(doc: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_cronscaler(doc)
    return {e.field: e.reason for e in info.value.errors}


# -- the document -------------------------------------------------------------------------


def test_the_issues_document_parses_and_round_trips() -> None:
    spec = parse_cronscaler(DOC)
    assert spec == CronScalerSpec(
        (ScaleJob("morning", "0 0 8 * * *", 4, "Asia/Shanghai"),), ("* * * * * 6,0",)
    )
    assert parse_cronscaler(spec.to_json()) == spec


def test_name_and_time_zone_default() -> None:
    spec = parse_cronscaler({"ScaleJobs": [{"Schedule": "0 15,45 * * * *", "TargetSize": 6}]})
    assert spec.jobs == (ScaleJob("job-0", "0 15,45 * * * *", 6, "UTC"),)
    assert spec.exclude_dates == ()


@pytest.mark.parametrize(
    ("job", "field", "reason"),
    [
        ({"Schedule": "0 8 * * *"}, "Schedule", "must have 6 fields"),
        ({"Schedule": "0 0 25 * * *"}, "Schedule", "not a valid cron expression"),
        ({"Schedule": "0 0 8 ? * L#2"}, "Schedule", "unsupported characters in '?'"),
        ({"Schedule": "0 0 0 30 2 *"}, "Schedule", "never fires"),
        ({"Schedule": None}, "Schedule", "required field is missing"),
        ({"TimeZone": "Mars/Olympus"}, "TimeZone", "unknown time zone 'Mars/Olympus'"),
        ({"TimeZone": "../../etc/passwd"}, "TimeZone", "unknown time zone"),
        ({"TargetSize": -1}, "TargetSize", "between 0 and 100, got -1"),
        ({"TargetSize": "4"}, "TargetSize", "must be an integer, got a string"),
        ({"RunOnce": True}, "RunOnce", "unknown field"),
    ],
)
def test_bad_job_fields_are_named(job: dict[str, Any], field: str, reason: str) -> None:
    doc = {"ScaleJobs": [{**DOC["ScaleJobs"][0], **job}]}
    problems = errors_of(doc)
    assert f"cronscaler.ScaleJobs[0].{field}" in problems, problems
    assert reason in problems[f"cronscaler.ScaleJobs[0].{field}"]


def test_bad_documents() -> None:
    assert errors_of({"ScaleJobs": []}) == {"cronscaler.ScaleJobs": "must list at least one job"}
    assert errors_of({}) == {"cronscaler.ScaleJobs": "required field is missing"}
    assert errors_of("x") == {"cronscaler": "must be a JSON object, got a string"}
    job = DOC["ScaleJobs"][0]
    problems = errors_of({"ScaleJobs": [job, job], "ExcludeDates": [7, "* * 6,0"], "Jobs": 1})
    assert problems == {
        "cronscaler.Jobs": "unknown field; expected one of ExcludeDates, ScaleJobs",
        "cronscaler.ExcludeDates[0]": "must be a string, got a number",
        "cronscaler.ExcludeDates[1]": (
            "must have 6 fields (second minute hour day-of-month month day-of-week), got 3"
        ),
        "cronscaler.ScaleJobs[1].Name": "'morning' is used by another job",
    }


def test_an_exclusion_of_every_date_is_refused() -> None:
    problems = errors_of({**DOC, "ExcludeDates": ["0 0 0 * * *"]})
    assert "excludes every date" in problems["cronscaler.ExcludeDates[0]"]


# -- evaluation ---------------------------------------------------------------------------


def test_a_job_fires_at_its_second_in_its_time_zone() -> None:
    spec = parse_cronscaler(DOC)
    set_at = shanghai(MONDAY, 7)
    before = evaluate(spec, set_at, shanghai(MONDAY, 7, 59, 59))
    assert before.target is None
    assert before.next is not None and before.next.time == shanghai(MONDAY, 8)
    at = evaluate(spec, set_at, shanghai(MONDAY, 8))
    assert at.target == 4 and at.fired
    assert at.last is not None and (at.last.job, at.last.time) == ("morning", shanghai(MONDAY, 8))
    # The same instant seen in UTC (00:00 UTC is 08:00 in Shanghai).
    in_utc = evaluate(spec, set_at, datetime(2026, 3, MONDAY, 0, 0, 0, 500_000, tzinfo=UTC))
    assert in_utc.target == 4
    # The target holds until the next firing.
    assert evaluate(spec, set_at, shanghai(MONDAY + 1, 7, 59)).target == 4


def test_not_retroactive() -> None:
    spec = parse_cronscaler(DOC)
    set_at = shanghai(MONDAY, 8, 0, 1)  # a second after the morning firing
    assert evaluate(spec, set_at, shanghai(MONDAY, 20)).target is None
    assert evaluate(spec, set_at, shanghai(MONDAY + 1, 8)).target == 4


def test_exclude_dates_skip_weekend_firings() -> None:
    spec = parse_cronscaler(
        {
            "ExcludeDates": ["* * * * * 6,0"],
            "ScaleJobs": [
                {
                    "Name": "up",
                    "Schedule": "0 0 8 * * *",
                    "TargetSize": 4,
                    "TimeZone": "Asia/Shanghai",
                },
                {
                    "Name": "down",
                    "Schedule": "0 0 20 * * *",
                    "TargetSize": 1,
                    "TimeZone": "Asia/Shanghai",
                },
            ],
        }
    )
    set_at = shanghai(FRIDAY, 0)
    assert evaluate(spec, set_at, shanghai(FRIDAY, 9)).target == 4
    saturday = evaluate(spec, set_at, shanghai(SATURDAY, 9))
    assert saturday.target == 1  # Friday 20:00's; Saturday 08:00 was skipped
    assert saturday.last is not None and saturday.last.time == shanghai(FRIDAY, 20)
    assert saturday.next is not None and saturday.next.time == shanghai(MONDAY, 8)
    assert evaluate(spec, set_at, shanghai(MONDAY, 8)).target == 4


def test_exclude_dates_match_whole_days() -> None:
    # "the 8th of March" written with a time of day still excludes the whole date
    spec = CronScalerSpec((ScaleJob("j", "0 0 12 * * *", 2),), ("0 30 23 8 3 *",))
    utc = datetime(2026, 3, 8, 13, tzinfo=UTC)
    state = evaluate(spec, datetime(2026, 3, 1, tzinfo=UTC), utc)
    assert state.last is not None and state.last.time.day == 7


def test_fired_reports_each_firing_once() -> None:
    spec = parse_cronscaler(DOC)
    set_at = shanghai(MONDAY, 7)
    first = evaluate(
        spec, set_at, shanghai(MONDAY, 8, 0, 1), last_evaluated=shanghai(MONDAY, 7, 59, 59)
    )
    again = evaluate(
        spec, set_at, shanghai(MONDAY, 8, 0, 2), last_evaluated=shanghai(MONDAY, 8, 0, 1)
    )
    assert (first.fired, again.fired) == (True, False)
    assert again.target == 4


def test_the_most_recent_job_wins_and_ties_go_to_the_larger_target() -> None:
    spec = CronScalerSpec(
        (
            ScaleJob("every-minute", "0 * * * * *", 2),
            ScaleJob("half-past", "30 * * * * *", 5),
            ScaleJob("top-of-hour", "0 0 * * * *", 7),
        )
    )
    set_at = datetime(2026, 1, 1, tzinfo=UTC)
    at = datetime(2026, 1, 1, 10, 5, 40, tzinfo=UTC)
    assert evaluate(spec, set_at, at).last.job == "half-past"  # type: ignore[union-attr]
    assert evaluate(spec, set_at, at.replace(minute=6, second=10)).target == 2
    top = evaluate(spec, set_at, at.replace(hour=11, minute=0, second=0))
    assert (top.target, top.last.job) == (7, "top-of-hour")  # type: ignore[union-attr]


def test_every_day_excluded_gives_no_target() -> None:
    spec = CronScalerSpec((ScaleJob("j", "0 0 8 * * *", 3),), ("* * * * * *",))
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    state = evaluate(spec, datetime(2020, 1, 1, tzinfo=UTC), now)
    assert state.target is None and state.next is None
    assert next_firing(spec, now) is None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(parse_cronscaler(DOC), datetime(2026, 1, 1), datetime.now(UTC))


def test_cron_target_is_the_autoscalers_floor() -> None:
    autoscaler = parse_autoscaler(
        {"min": 1, "max": 8, "scaleStrategies": [{"metricName": "qps", "threshold": 10}]}
    )
    cron = parse_cronscaler(DOC)
    set_at = shanghai(MONDAY, 7)
    quiet = Metrics((Sample(0.0, qps=1.0),), 0.0, 0.0)
    target = evaluate(cron, set_at, shanghai(MONDAY, 7, 59, 59)).target
    assert decide(autoscaler, 1, quiet, Recommendations(), 0.0, target).desired == 1
    target = evaluate(cron, set_at, shanghai(MONDAY, 8)).target
    decision = decide(autoscaler, 1, quiet, Recommendations(), 0.0, target)
    assert (decision.desired, decision.floor, decision.ceiling) == (4, 4, 8)
    busy = Metrics((Sample(0.0, qps=30.0),), 0.0, 0.0)
    assert decide(autoscaler, 4, busy, Recommendations(), 0.0, target).desired == 8


def test_a_firing_in_a_daylight_saving_gap_happens_when_the_clock_jumps() -> None:
    new_york = ZoneInfo("America/New_York")
    spec = CronScalerSpec((ScaleJob("j", "0 30 2 * * *", 3, "America/New_York"),))
    set_at = datetime(2026, 3, 1, tzinfo=UTC)
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    assert evaluate(spec, set_at, datetime(2026, 3, 8, 1, 59, tzinfo=new_york)).last.time.day == 7  # type: ignore[union-attr]
    state = evaluate(spec, set_at, datetime(2026, 3, 8, 3, 0, tzinfo=new_york))
    assert state.target == 3
    assert state.last is not None and state.last.time.day == 8
