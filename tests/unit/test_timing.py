"""Fire-time arithmetic of schedules: cron in a time zone across DST, intervals, one-shots."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from omniq.models import Schedule
from omniq.services.timing import first_run, next_cron_time, next_run

FUNC = "tests.helpers:func"


def fire_times(expression: str, zone: str, start: date, days: int) -> list[datetime]:
    """Every fire time from local midnight of ``start`` (included) for ``days`` local days."""
    tz = ZoneInfo(zone)
    midnight = datetime(start.year, start.month, start.day, tzinfo=tz).astimezone(UTC)
    after = midnight - timedelta(microseconds=1)
    end = (
        datetime(start.year, start.month, start.day, tzinfo=tz) + timedelta(days=days)
    ).astimezone(UTC)
    fires: list[datetime] = []
    while True:
        after = next_cron_time(expression, zone, after)
        if after >= end:
            return fires
        fires.append(after)
        assert len(fires) < 10_000, "runaway"


def per_local_date(fires: list[datetime], zone: str) -> Counter[date]:
    tz = ZoneInfo(zone)
    return Counter(f.astimezone(tz).date() for f in fires)


def local_times(fires: list[datetime], zone: str) -> dict[date, str]:
    tz = ZoneInfo(zone)
    return {f.astimezone(tz).date(): f.astimezone(tz).strftime("%H:%M %Z") for f in fires}


def check_once_per_date(fires: list[datetime], zone: str, start: date, days: int) -> None:
    assert all(f.tzinfo is UTC for f in fires)
    assert fires == sorted(fires)
    assert len(set(fires)) == len(fires)
    counts = per_local_date(fires, zone)
    expected = {start + timedelta(days=i): 1 for i in range(days)}
    assert dict(counts) == expected


# --- DST: each local date fires exactly once ----------------------------------------------


@pytest.mark.parametrize(
    ("zone", "expression", "start", "transition", "expected_local"),
    [
        # New York falls back on 2026-11-01 (01:00-02:00 happens twice): first occurrence.
        ("America/New_York", "30 1 * * *", date(2026, 10, 30), date(2026, 11, 1), "01:30 EDT"),
        # New York springs forward on 2026-03-08 (02:00-03:00 does not exist).
        ("America/New_York", "30 1 * * *", date(2026, 3, 6), date(2026, 3, 8), "01:30 EST"),
        ("America/New_York", "30 2 * * *", date(2026, 3, 6), date(2026, 3, 8), "03:30 EDT"),
        ("America/New_York", "30 2 * * *", date(2026, 10, 30), date(2026, 11, 1), "02:30 EST"),
        # London: spring forward 2026-03-29 at 01:00, fall back 2026-10-25 at 02:00.
        ("Europe/London", "30 1 * * *", date(2026, 3, 27), date(2026, 3, 29), "02:30 BST"),
        ("Europe/London", "30 1 * * *", date(2026, 10, 23), date(2026, 10, 25), "01:30 BST"),
        ("Europe/London", "0 2 * * *", date(2026, 10, 23), date(2026, 10, 25), "02:00 GMT"),
        # Lord Howe shifts by 30 minutes: back on 2026-04-05 at 02:00 (01:30-02:00 twice),
        # forward on 2026-10-04 at 02:00 (02:00-02:30 does not exist).
        ("Australia/Lord_Howe", "45 1 * * *", date(2026, 4, 3), date(2026, 4, 5), "01:45 +11"),
        ("Australia/Lord_Howe", "15 2 * * *", date(2026, 10, 2), date(2026, 10, 4), "02:45 +11"),
        ("Australia/Lord_Howe", "45 1 * * *", date(2026, 10, 2), date(2026, 10, 4), "01:45 +1030"),
    ],
    ids=[
        "ny-fall-back-0130",
        "ny-spring-forward-0130",
        "ny-spring-forward-0230-gap",
        "ny-fall-back-0230",
        "london-spring-forward-0130-gap",
        "london-fall-back-0130-repeat",
        "london-fall-back-0200",
        "lord-howe-back-0145-repeat",
        "lord-howe-forward-0215-gap",
        "lord-howe-forward-0145",
    ],
)
def test_daily_cron_fires_once_per_local_date_across_dst(
    zone: str, expression: str, start: date, transition: date, expected_local: str
) -> None:
    days = 5
    fires = fire_times(expression, zone, start, days)
    check_once_per_date(fires, zone, start, days)
    assert local_times(fires, zone)[transition] == expected_local


def test_fall_back_repeated_time_fires_at_first_occurrence() -> None:
    # 2026-11-01 01:30 in New York happens at 05:30 UTC (EDT) and 06:30 UTC (EST).
    after = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    first = next_cron_time("30 1 * * *", "America/New_York", after)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    second = next_cron_time("30 1 * * *", "America/New_York", first)
    assert second == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
    # Asking from between the two occurrences does not fire the repeat either.
    between = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    assert next_cron_time("30 1 * * *", "America/New_York", between) == second


def test_spring_forward_gap_time_fires_after_the_gap() -> None:
    after = datetime(2026, 3, 8, 0, 0, tzinfo=UTC)
    fire = next_cron_time("30 2 * * *", "America/New_York", after)
    assert fire == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT
    assert next_cron_time("30 2 * * *", "America/New_York", fire) == datetime(
        2026, 3, 9, 6, 30, tzinfo=UTC
    )


def test_hourly_cron_across_fall_back_fires_every_distinct_wall_time_once() -> None:
    zone = "America/New_York"
    fires = fire_times("0 * * * *", zone, date(2026, 11, 1), 1)
    tz = ZoneInfo(zone)
    walls = [f.astimezone(tz).strftime("%H:%M") for f in fires]
    # 25 real hours that day, 24 distinct wall-clock hours: each fires once.
    assert walls == [f"{h:02d}:00" for h in range(24)]
    assert all(b > a for a, b in itertools.pairwise(fires))


def test_hourly_cron_across_spring_forward_skips_the_missing_hour() -> None:
    zone = "America/New_York"
    fires = fire_times("0 * * * *", zone, date(2026, 3, 8), 1)
    tz = ZoneInfo(zone)
    walls = [f.astimezone(tz).strftime("%H:%M") for f in fires]
    # 02:00 does not exist: it maps onto 03:00, which fires once.
    assert walls == [f"{h:02d}:00" for h in range(24) if h != 2]
    assert len(fires) == 23


def test_next_cron_time_is_strictly_after_and_utc() -> None:
    at = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
    assert next_cron_time("30 9 * * *", "UTC", at) == at + timedelta(days=1)
    assert next_cron_time("30 9 * * *", "UTC", at - timedelta(microseconds=1)) == at
    berlin = datetime(2026, 6, 1, 11, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    fire = next_cron_time("*/15 * * * *", "UTC", berlin)
    assert fire == datetime(2026, 6, 1, 9, 15, tzinfo=UTC)
    assert fire.tzinfo is UTC


# --- first_run / next_run ---------------------------------------------------------------------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_interval_first_and_next_run() -> None:
    every = Schedule(func=FUNC, schedule_type="interval", interval=timedelta(minutes=10))
    assert first_run(every, NOW) == NOW + timedelta(minutes=10)
    assert next_run(every, NOW) == NOW + timedelta(minutes=10)
    start = NOW + timedelta(hours=3)
    anchored = Schedule(
        func=FUNC, schedule_type="interval", interval=timedelta(minutes=10), run_at=start
    )
    assert first_run(anchored, NOW) == start
    assert next_run(anchored, start) == start + timedelta(minutes=10)


def test_timestamp_first_and_next_run() -> None:
    at = NOW + timedelta(days=2)
    once = Schedule(func=FUNC, schedule_type="timestamp", run_at=at)
    assert first_run(once, NOW) == at
    assert next_run(once, at) is None


def test_cron_first_and_next_run() -> None:
    cron = Schedule(
        func=FUNC, schedule_type="cron", cron_expression="0 9 * * 1-5", timezone="Europe/Paris"
    )
    # 2026-06-01 is a Monday; 12:00 UTC is 14:00 in Paris: next is Tuesday 09:00 CEST.
    first = first_run(cron, NOW)
    assert first == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    assert first is not None
    friday = datetime(2026, 6, 5, 7, 0, tzinfo=UTC)
    assert next_run(cron, friday) == datetime(2026, 6, 8, 7, 0, tzinfo=UTC)  # Monday


def test_cron_first_run_respects_start_time() -> None:
    start = datetime(2026, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    cron = Schedule(
        func=FUNC,
        schedule_type="cron",
        cron_expression="0 9 * * *",
        timezone="Europe/Paris",
        run_at=start,
    )
    # A start time that matches the expression fires at the start time itself.
    assert first_run(cron, NOW) == start.astimezone(UTC)
    # A start time in the past does not fire in the past.
    past = Schedule(
        func=FUNC,
        schedule_type="cron",
        cron_expression="0 9 * * *",
        timezone="Europe/Paris",
        run_at=NOW - timedelta(days=10),
    )
    assert first_run(past, NOW) == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)


def _reference_next(expression: str, timezone: str, after: datetime) -> datetime:
    """The rule walked from three hours back, match by match (as before the shortcut)."""
    from croniter import croniter

    zone = ZoneInfo(timezone)
    local = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    it = croniter(expression, local)
    while True:
        instant = it.get_next(datetime).replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > after:
            return instant


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    "expression", ["*/7 * * * *", "30 2 * * *", "15 1 * * 0", "*/20 * * * * *"]
)
def test_the_next_fire_time_is_the_walked_rule_around_offset_changes(
    timezone: str, expression: str
) -> None:
    # Every 41 minutes over the days around this zone's offset changes of 2026,
    # where the shortcut (start at the instant when no offset change is near) is
    # off and on: the same answers as walking from three hours back.
    zone = ZoneInfo(timezone)
    days = [date(2026, m, day) for m in (3, 4, 10, 11) for day in range(1, 29)]
    changes = [
        d
        for d in days
        if datetime(d.year, d.month, d.day, tzinfo=zone).utcoffset()
        != (datetime(d.year, d.month, d.day, tzinfo=zone) + timedelta(days=1)).utcoffset()
    ]
    assert changes
    for day in changes[:2]:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=12)
        for step in range(0, 48 * 60, 41):
            after = start + timedelta(minutes=step, seconds=step % 60)
            assert next_cron_time(expression, timezone, after) == _reference_next(
                expression, timezone, after
            ), (expression, timezone, after)
