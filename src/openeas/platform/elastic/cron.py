"""EAS's ``cronscaler``: scheduled instance counts, parsed and evaluated without a clock.

::

    {"ExcludeDates": ["* * * * * 6,0"],
     "ScaleJobs": [{"Name": "morning", "Schedule": "0 0 8 * * *", "TargetSize": 4,
                    "TimeZone": "Asia/Shanghai"}]}

Schedules are six-field cron expressions, seconds first (``sec min hour day month
weekday``), evaluated by croniter in the job's IANA time zone (UTC by default: OpenEAS has
no region whose zone EAS would use).  The rules :func:`evaluate` implements:

* A job takes effect when it fires, and its ``TargetSize`` holds until a job fires
  again: the active target is the one of the most recent firing at or before ``now``.
* Not retroactive: firings at or before the time the jobs were set do not count, so a
  new or changed ``cronscaler`` changes nothing until its first firing.
* A firing on a date matched by any ``ExcludeDates`` expression (a date matches when the
  expression fires at any second of that day, in the job's zone) is skipped, as if the
  job had not run that day; the previous firing's target stays.
* Two jobs firing at the same second: the larger ``TargetSize`` wins.

How the target combines with an autoscaler is the policy's business
(:func:`openeas.platform.elastic.policy.bounds`: it becomes the floor); without one it is
the service's instance count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from openeas.platform.elastic.autoscaler import MAX_INSTANCES
from openeas.platform.elastic.fields import FieldReader, json_type, object_at
from openeas.platform.errors import FieldError, SpecError

DEFAULT_TIME_ZONE = "UTC"
#: Excluded firing days skipped at most when looking for a job's latest or next firing:
#: a job excluded on every day it fires for longer than this counts as not firing (the
#: search would otherwise go back to when the jobs were set).
MAX_SKIPPED_DAYS = 366
#: EAS's cron syntax: digits, names (JAN-DEC, SUN-SAT), ``*``, ``/``, ``,`` and ``-``.
_FIELD = re.compile(r"^[0-9A-Za-z*/,-]+$")
_CRON_FIELDS = "second minute hour day-of-month month day-of-week"


@dataclass(frozen=True)
class ScaleJob:
    """One ``ScaleJobs`` entry: at each ``schedule`` firing, scale to ``target_size``."""

    name: str
    schedule: str
    target_size: int
    time_zone: str = DEFAULT_TIME_ZONE

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@dataclass(frozen=True)
class CronScalerSpec:
    jobs: tuple[ScaleJob, ...]
    exclude_dates: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ExcludeDates": list(self.exclude_dates),
            "ScaleJobs": [
                {
                    "Name": j.name,
                    "Schedule": j.schedule,
                    "TargetSize": j.target_size,
                    "TimeZone": j.time_zone,
                }
                for j in self.jobs
            ],
        }


@dataclass(frozen=True)
class Firing:
    """Job ``job`` fired at ``time`` (aware, in the job's zone) with ``target_size``."""

    job: str
    time: datetime
    target_size: int


@dataclass(frozen=True)
class CronState:
    """The scheduled target at some moment, for the reconciler and ``eascmd desc``."""

    #: the active target, ``None`` until a job has fired since the jobs were set
    target: int | None
    #: the firing that set ``target``
    last: Firing | None
    #: ``last`` happened after the previous evaluation: an event is due
    fired: bool
    #: the next firing after now, if any
    next: Firing | None


# -- parsing ------------------------------------------------------------------------------


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a six-field, seconds-first cron expression, or ``None``."""
    fields = expr.split()
    if len(fields) != 6:
        return f"must have 6 fields ({_CRON_FIELDS}), got {len(fields)}"
    bad = [f for f in fields if not _FIELD.match(f)]
    if bad:
        return f"unsupported characters in {bad[0]!r}; use digits, names, * / , -"
    try:
        croniter(expr, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
    except CroniterBadCronError as exc:
        return f"not a valid cron expression: {exc}"
    except CroniterBadDateError:
        return "never fires"
    return None


def zone_problem(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai or UTC"
    return None


def parse_cronscaler(doc: Any, path: str = "cronscaler") -> CronScalerSpec:
    """Validate a cronscaler document; raises :class:`SpecError` naming every bad field."""
    errors: list[FieldError] = []
    reader = object_at(doc, path, errors)
    spec = _read(reader) if reader is not None else None
    if errors or spec is None:
        raise SpecError(errors)
    return spec


def _read(reader: FieldReader) -> CronScalerSpec | None:
    reader.reject_unknown(("ExcludeDates", "ScaleJobs"))
    excludes = _read_excludes(reader)
    items = reader.array("ScaleJobs")
    if items is not None and not items:
        reader.fail("ScaleJobs", "must list at least one job")
    jobs: list[ScaleJob] = []
    for i, item in enumerate(items or []):
        item_reader = object_at(item, f"{reader.at('ScaleJobs')}[{i}]", reader.errors)
        job = _read_job(item_reader, i) if item_reader is not None else None
        if job is None or item_reader is None:
            continue
        if any(j.name == job.name for j in jobs):
            item_reader.fail("Name", f"{job.name!r} is used by another job")
        else:
            jobs.append(job)
    if reader.errors:
        return None
    return CronScalerSpec(tuple(jobs), excludes)


def _read_excludes(reader: FieldReader) -> tuple[str, ...]:
    exprs = reader.array("ExcludeDates", []) or []
    found: list[str] = []
    for i, expr in enumerate(exprs):
        key = reader.at("ExcludeDates") + f"[{i}]"
        if not isinstance(expr, str):
            reader.errors.append(FieldError(key, f"must be a string, got {json_type(expr)}"))
            continue
        problem = cron_problem(expr)
        if not problem and expr.split()[3:] == ["*", "*", "*"]:
            problem = "excludes every date (day-of-month, month and day-of-week are all *)"
        if problem:
            reader.errors.append(FieldError(key, problem))
        found.append(" ".join(expr.split()))
    return tuple(found)


def _read_job(reader: FieldReader, index: int) -> ScaleJob | None:
    reader.reject_unknown(("Name", "Schedule", "TargetSize", "TimeZone"))
    name = reader.string("Name", f"job-{index}")
    schedule = reader.string("Schedule")
    target = reader.integer("TargetSize", lo=0, hi=MAX_INSTANCES)
    zone = reader.string("TimeZone", DEFAULT_TIME_ZONE)
    if schedule is not None and (problem := cron_problem(schedule)):
        reader.fail("Schedule", problem)
        schedule = None
    if zone is not None and (problem := zone_problem(zone)):
        reader.fail("TimeZone", problem)
        zone = None
    if name is None or schedule is None or target is None or zone is None:
        return None
    return ScaleJob(name, " ".join(schedule.split()), target, zone)


# -- evaluation ---------------------------------------------------------------------------


def evaluate(
    spec: CronScalerSpec,
    set_at: datetime,
    now: datetime,
    last_evaluated: datetime | None = None,
) -> CronState:
    """The scheduled target at ``now`` for jobs set at ``set_at`` (see the module rules).

    ``last_evaluated`` is when the caller last asked: ``fired`` says whether the active
    firing happened since then, so the caller records one event per firing.  The result
    changes only at ``next.time`` (or with a new spec): a caller may keep it until then
    rather than evaluating on every tick (each call steps croniter: milliseconds).
    """
    for moment in (set_at, now, last_evaluated):
        if moment is not None and moment.tzinfo is None:
            raise ValueError("cron evaluation needs timezone-aware datetimes")
    last = latest_firing(spec, set_at, now)
    fired = last is not None and (last_evaluated is None or last.time > last_evaluated)
    return CronState(
        target=last.target_size if last else None,
        last=last,
        fired=fired,
        next=next_firing(spec, now),
    )


def latest_firing(spec: CronScalerSpec, set_at: datetime, now: datetime) -> Firing | None:
    """The most recent non-excluded firing in ``(set_at, now]`` over all jobs."""
    found = [
        Firing(job.name, t, job.target_size)
        for job in spec.jobs
        if (t := _job_latest(job, spec.exclude_dates, set_at, now)) is not None
    ]
    return max(found, key=lambda f: (f.time, f.target_size), default=None)


def next_firing(spec: CronScalerSpec, now: datetime) -> Firing | None:
    """The first non-excluded firing after ``now`` over all jobs."""
    found = [
        Firing(job.name, t, job.target_size)
        for job in spec.jobs
        if (t := _job_next(job, spec.exclude_dates, now)) is not None
    ]
    return min(found, key=lambda f: (f.time, -f.target_size), default=None)


def _job_latest(
    job: ScaleJob, excludes: tuple[str, ...], after: datetime, now: datetime
) -> datetime | None:
    # croniter's get_prev is strictly before its start: start one second past now.
    cursor = now.astimezone(job.zone).replace(microsecond=0) + timedelta(seconds=1)
    return _search(job, excludes, cursor, backwards=True, stop=after)


def _job_next(job: ScaleJob, excludes: tuple[str, ...], now: datetime) -> datetime | None:
    cursor = now.astimezone(job.zone).replace(microsecond=0)
    return _search(job, excludes, cursor, backwards=False, stop=None)


def _search(
    job: ScaleJob,
    excludes: tuple[str, ...],
    cursor: datetime,
    *,
    backwards: bool,
    stop: datetime | None,
) -> datetime | None:
    """Step through ``job``'s firings from ``cursor`` to the first one on a day not
    excluded (``None`` past ``stop``); an excluded firing skips the rest of its day.

    The iterators are built once and moved with ``set_current``: parsing an expression
    costs far more than stepping it.
    """
    zone = job.zone
    firings = croniter(job.schedule, cursor, second_at_beginning=True)
    days = [croniter(expr, cursor, second_at_beginning=True) for expr in excludes]
    for _ in range(MAX_SKIPPED_DAYS):
        try:
            fired = firings.get_prev(datetime) if backwards else firings.get_next(datetime)
        except CroniterBadDateError:
            return None
        if stop is not None and fired <= stop:
            return None
        if not _excluded(days, fired.date(), zone):
            return fired
        day = fired.date() if backwards else fired.date() + timedelta(days=1)
        edge = datetime.combine(day, time(), zone)
        firings.set_current(edge if backwards else edge - timedelta(seconds=1), force=True)
    return None


def _excluded(days: list[croniter], day: date, zone: ZoneInfo) -> bool:
    """Whether any ``ExcludeDates`` iterator fires at some second of ``day``."""
    start = datetime.combine(day, time(), zone)
    end = datetime.combine(day + timedelta(days=1), time(), zone)
    for it in days:
        it.set_current(start - timedelta(seconds=1), force=True)
        if it.get_next(datetime) < end:
            return True
    return False
