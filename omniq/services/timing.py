"""Fire-time arithmetic for schedules: cron with time zones (DST-safe), intervals, one-shot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from omniq.errors import ValidationError
from omniq.models import Schedule, ScheduleType

# Larger than any UTC offset change (Lord Howe's is 30 min, most are 1 h).
_LOOKBACK = timedelta(hours=3)


def next_cron_time(expression: str, timezone: str, after: datetime) -> datetime:
    """The first instant strictly after ``after`` that matches ``expression`` in ``timezone``.

    Cron fields are matched against local wall-clock time, each local time at
    most once: a wall time that occurs twice (fall back) fires at its first
    occurrence only; one that does not exist (spring forward) fires at the
    same offset past the gap (02:30 on a spring-forward night fires at 03:30).
    So a fixed-time daily schedule fires exactly once per local date.
    """
    zone = ZoneInfo(timezone)
    local_after = after.astimezone(zone).replace(tzinfo=None)
    if (after - _LOOKBACK).astimezone(zone).utcoffset() == (after + _LOOKBACK).astimezone(
        zone
    ).utcoffset():
        # No offset change near ``after``: local time runs with UTC there, so no
        # earlier wall time can be a later instant; start right at it. (Walking
        # the whole look-back cost a cron with a seconds field 10,800 steps.)
        it = croniter(expression, local_after)
    else:
        it = croniter(expression, local_after - _LOOKBACK)
    while True:
        naive: datetime = it.get_next(datetime)
        instant = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > after:
            return instant


def _within_end(schedule: Schedule, when: datetime | None) -> datetime | None:
    """``when``, or None if it falls after the schedule's ``end_at`` (the schedule is done)."""
    if when is None or schedule.end_at is None or when <= schedule.end_at:
        return when
    return None


def first_run(schedule: Schedule, now: datetime) -> datetime | None:
    """When a new schedule fires first (None: its ``end_at`` comes before that)."""
    return _within_end(schedule, _first_run(schedule, now))


def _first_run(schedule: Schedule, now: datetime) -> datetime | None:
    kind = schedule.schedule_type
    if kind is ScheduleType.TIMESTAMP:
        return schedule.run_at
    field = "interval" if kind is ScheduleType.INTERVAL else "cron_expression"
    if schedule.run_at is not None:
        field = "run_at"  # the start time is what pushes the first run out of range
    try:
        if kind is ScheduleType.INTERVAL:
            assert schedule.interval is not None
            return schedule.run_at or now + schedule.interval
        assert schedule.cron_expression is not None
        start = schedule.run_at - timedelta(microseconds=1) if schedule.run_at else now
        return next_cron_time(schedule.cron_expression, schedule.timezone, max(start, now))
    except OverflowError:
        raise ValidationError(field, "the first run would be past the year 9999") from None
    except CroniterBadDateError:
        raise ValidationError(
            field, f"{schedule.cron_expression!r} matches no date from now on"
        ) from None


def next_run(schedule: Schedule, fired_at: datetime) -> datetime | None:
    """The fire time after ``fired_at`` (None: a one-shot is done, or ``end_at`` passed)."""
    return _within_end(schedule, _next_run(schedule, fired_at))


def _next_run(schedule: Schedule, fired_at: datetime) -> datetime | None:
    kind = schedule.schedule_type
    if kind is ScheduleType.TIMESTAMP:
        return None
    if kind is ScheduleType.INTERVAL:
        assert schedule.interval is not None
        return fired_at + schedule.interval
    assert schedule.cron_expression is not None
    return next_cron_time(schedule.cron_expression, schedule.timezone, fired_at)


def run_from_now(schedule: Schedule, now: datetime) -> datetime | None:
    """The next run counted from ``now`` (resume, or a changed timing): no burst of missed runs.

    An interval schedule whose start lies in the past continues from now; a
    one-shot whose time passed fires once, now.
    """
    nxt = _first_run(schedule, now)
    if nxt is not None and nxt < now:
        if schedule.schedule_type is ScheduleType.INTERVAL and schedule.interval is not None:
            return _within_end(schedule, now + schedule.interval)
        return _within_end(schedule, now)
    return _within_end(schedule, nxt)
