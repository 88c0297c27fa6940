"""The scheduler on every engine, driven by a fake clock: exactly one task per
(schedule, fire time) with several schedulers racing, interval / cron (with time
zones, through DST changes) / one-shot schedules, max_runs, pause and resume,
misfire policies, and the newest result of a schedule.

Time passes by handing ``fire_due_async`` explicit ``now`` values; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
import sqlalchemy as sa

from omniq._time import utcnow
from omniq.db.schema import tasks as tasks_table
from omniq.models import (
    EventType,
    MisfirePolicy,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    TaskStatus,
)
from omniq.services import Services
from omniq.services.scheduler import MAX_CATCH_UP, Scheduler
from omniq.services.timing import next_cron_time
from omniq.worker import Worker

# The worker resolves "tests.worker_tasks:..." by import: the repository root
# must be importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

pytestmark = pytest.mark.anyio

MODULE = "tests.worker_tasks"
FUNC = f"{MODULE}:stamp"
T0 = datetime(2031, 1, 6, 12, 0, tzinfo=UTC)  # a fake "now" far from the real clock
MINUTE = timedelta(minutes=1)

ServicesFactory = Callable[..., Awaitable[Services]]


# --- helpers ----------------------------------------------------------------------------------


def scheduler_of(svc: Services) -> Scheduler:
    return Scheduler(svc.storage, svc.queue)


def interval_schedule(every: timedelta, first: datetime, **fields: Any) -> Schedule:
    return Schedule(
        func=FUNC,
        schedule_type=ScheduleType.INTERVAL,
        interval=every,
        next_run_at=first,
        **fields,
    )


def cron_schedule(expression: str, timezone: str, after: datetime, **fields: Any) -> Schedule:
    """A cron schedule whose first fire is the first match strictly after ``after``."""
    return Schedule(
        func=FUNC,
        schedule_type=ScheduleType.CRON,
        cron_expression=expression,
        timezone=timezone,
        next_run_at=next_cron_time(expression, timezone, after),
        **fields,
    )


async def fire_times(svc: Services, schedule_id: str) -> list[datetime]:
    """``scheduled_for`` of every task of the schedule (one entry per task), sorted."""
    rows = await svc.storage.read(
        lambda conn: conn.execute(
            sa.select(tasks_table.c.scheduled_for).where(tasks_table.c.schedule_id == schedule_id)
        ).all()
    )
    return sorted(row[0] for row in rows)


async def must_schedule(svc: Services, schedule_id: str) -> Schedule:
    schedule = await svc.queue.get_schedule_async(schedule_id)
    assert schedule is not None
    return schedule


def ticks(start: datetime, end: datetime, step: timedelta) -> Iterable[datetime]:
    now = start
    while now <= end:
        yield now
        now += step


def assert_once_each(times: list[datetime]) -> None:
    repeated = {t: n for t, n in Counter(times).items() if n > 1}
    assert repeated == {}, f"fire times with more than one task: {repeated}"


# --- exactly once, with schedulers racing -------------------------------------------------------


async def test_racing_schedulers_create_one_task_per_fire_time(
    open_services: ServicesFactory,
) -> None:
    services = [await open_services() for _ in range(3)]
    schedulers = [scheduler_of(svc) for svc in services]
    svc = services[0]
    end = T0 + timedelta(hours=1)
    ids = {
        "every-7s": await svc.queue.schedule_async(
            interval_schedule(
                timedelta(seconds=7), T0 + timedelta(seconds=3), misfire_policy="run_all"
            )
        ),
        "every-minute": await svc.queue.schedule_async(
            interval_schedule(MINUTE, T0, misfire_policy="run_all")
        ),
        "cron-kolkata": await svc.queue.schedule_async(
            cron_schedule("*/5 * * * *", "Asia/Kolkata", T0, misfire_policy="run_all")
        ),
        "cron-st-johns": await svc.queue.schedule_async(
            cron_schedule("0 * * * *", "America/St_Johns", T0, misfire_policy="run_all")
        ),
    }
    created = 0
    for i, tick in enumerate(ticks(T0, end, timedelta(seconds=20))):
        # Each scheduler sees its own (skewed) clock; all agree on the last tick.
        skews = [timedelta(seconds=(i * 3 + k * 4) % 9) for k in range(len(schedulers))]
        nows = [min(tick + skew, end) for skew in skews]
        fired = await asyncio.gather(
            *(s.fire_due_async(now) for s, now in zip(schedulers, nows, strict=True))
        )
        created += sum(fired)
    created += sum(await asyncio.gather(*(s.fire_due_async(end) for s in schedulers)))

    # Expected fire times, computed without the library: walk the clock second by second
    # (intervals) or minute by minute, matching local wall time (cron).
    expected = {
        "every-7s": list(ticks(T0 + timedelta(seconds=3), end, timedelta(seconds=7))),
        "every-minute": [T0 + k * MINUTE for k in range(61)],
        "cron-kolkata": [
            m
            for m in ticks(T0 + MINUTE, end, MINUTE)
            if m.astimezone(ZoneInfo("Asia/Kolkata")).minute % 5 == 0
        ],
        "cron-st-johns": [
            m
            for m in ticks(T0 + MINUTE, end, MINUTE)
            if m.astimezone(ZoneInfo("America/St_Johns")).minute == 0
        ],
    }
    assert len(expected["every-7s"]) == 514
    assert len(expected["cron-kolkata"]) == 12
    assert expected["cron-st-johns"] == [T0 + timedelta(minutes=30)]
    total = 0
    for name, schedule_id in ids.items():
        times = await fire_times(svc, schedule_id)
        assert_once_each(times)
        assert times == expected[name], name
        schedule = await must_schedule(svc, schedule_id)
        assert schedule.run_count == len(times)
        assert schedule.next_run_at is not None and schedule.next_run_at > end
        total += len(times)
    assert created == total


async def test_interval_schedule_fires_on_its_grid(svc: Services) -> None:
    schedule_id = await svc.queue.schedule_async(
        interval_schedule(timedelta(minutes=10), T0, func_args=[], name="grid")
    )
    scheduler = scheduler_of(svc)

    assert await scheduler.fire_due_async(T0 - timedelta(seconds=1)) == 0
    assert await scheduler.fire_due_async(T0) == 1
    assert await scheduler.fire_due_async(T0 + timedelta(minutes=5)) == 0
    assert await scheduler.fire_due_async(T0 + timedelta(minutes=10, seconds=2)) == 1

    assert await fire_times(svc, schedule_id) == [T0, T0 + timedelta(minutes=10)]
    schedule = await must_schedule(svc, schedule_id)
    assert schedule.next_run_at == T0 + timedelta(minutes=20)
    assert schedule.last_run_at == T0 + timedelta(minutes=10, seconds=2)
    assert (schedule.run_count, schedule.status) == (2, ScheduleStatus.ACTIVE)
    tasks = await svc.queue.list_tasks_async()
    assert {t.name for t in tasks} == {"grid"}
    assert {t.status for t in tasks} == {TaskStatus.PENDING}
    fired = await svc.events.get_events_async(
        schedule_id=schedule_id, event_type=EventType.SCHEDULE_FIRED
    )
    assert len(fired) == 2


async def test_cron_schedule_follows_local_time_across_a_dst_change(svc: Services) -> None:
    # Weekdays 09:00 in Berlin, across the switch to summer time (2024-03-31).
    start = datetime(2024, 3, 25, 0, 0, tzinfo=UTC)
    end = datetime(2024, 4, 6, 0, 0, tzinfo=UTC)
    schedule_id = await svc.queue.schedule_async(
        cron_schedule("0 9 * * 1-5", "Europe/Berlin", start)
    )
    scheduler = scheduler_of(svc)
    for now in ticks(start, end, timedelta(minutes=30)):
        await scheduler.fire_due_async(now)

    times = await fire_times(svc, schedule_id)
    winter = [datetime(2024, 3, d, 8, 0, tzinfo=UTC) for d in (25, 26, 27, 28, 29)]
    summer = [datetime(2024, 4, d, 7, 0, tzinfo=UTC) for d in (1, 2, 3, 4, 5)]
    assert times == winter + summer


# --- DST: one task per local date ---------------------------------------------------------------


@attrs.frozen
class DstCase:
    zone: str
    cron: str
    day: date  # the transition day
    fire_on_day: datetime  # the documented fire instant on that day (UTC)


DST_CASES = {
    # Fall back: the wall time occurs twice; it fires at its first occurrence only.
    "new-york-fall-back": DstCase(
        "America/New_York",
        "30 1 * * *",
        date(2024, 11, 3),
        datetime(2024, 11, 3, 5, 30, tzinfo=UTC),
    ),
    # Spring forward: 02:30 does not exist; it fires at the same offset past the gap (03:30).
    "new-york-spring-forward": DstCase(
        "America/New_York",
        "30 2 * * *",
        date(2024, 3, 10),
        datetime(2024, 3, 10, 7, 30, tzinfo=UTC),
    ),
    "london-fall-back": DstCase(
        "Europe/London", "30 1 * * *", date(2024, 10, 27), datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    ),
    "london-spring-forward": DstCase(
        "Europe/London", "30 1 * * *", date(2024, 3, 31), datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    ),
    # Lord Howe moves its clocks by 30 minutes.
    "lord-howe-fall-back": DstCase(
        "Australia/Lord_Howe",
        "45 1 * * *",
        date(2024, 4, 7),
        datetime(2024, 4, 6, 14, 45, tzinfo=UTC),
    ),
    "lord-howe-spring-forward": DstCase(
        "Australia/Lord_Howe",
        "15 2 * * *",
        date(2024, 10, 6),
        datetime(2024, 10, 5, 15, 45, tzinfo=UTC),
    ),
}


@pytest.mark.parametrize("case", list(DST_CASES.values()), ids=list(DST_CASES))
async def test_daily_schedule_fires_once_per_local_date_through_dst(
    open_services: ServicesFactory, case: DstCase
) -> None:
    zone = ZoneInfo(case.zone)
    services = [await open_services() for _ in range(2)]
    svc = services[0]
    schedulers = [scheduler_of(s) for s in services]
    days = [case.day - timedelta(days=1), case.day, case.day + timedelta(days=1)]
    start = datetime.combine(days[0], datetime.min.time(), zone).astimezone(UTC)
    end = datetime.combine(days[-1], datetime.min.time().replace(hour=12), zone).astimezone(UTC)
    schedule_id = await svc.queue.schedule_async(cron_schedule(case.cron, case.zone, start))

    for now in ticks(start, end, timedelta(minutes=15)):
        await asyncio.gather(*(s.fire_due_async(now) for s in schedulers))

    times = await fire_times(svc, schedule_id)
    per_date = Counter(t.astimezone(zone).date() for t in times)
    assert per_date == dict.fromkeys(days, 1)
    on_day = [t for t in times if t.astimezone(zone).date() == case.day]
    assert on_day == [case.fire_on_day]
    hour, minute = (int(x) for x in reversed(case.cron.split()[:2]))
    for t in times:
        if t.astimezone(zone).date() != case.day:  # ordinary days: the wall time itself
            local = t.astimezone(zone)
            assert (local.hour, local.minute) == (hour, minute)


# --- one-shot, max_runs, pause/resume -------------------------------------------------------


async def test_one_shot_schedule_fires_once_and_completes(svc: Services) -> None:
    at = T0 + timedelta(hours=2)
    schedule_id = await svc.queue.schedule_async(
        Schedule(func=FUNC, schedule_type=ScheduleType.TIMESTAMP, run_at=at)
    )
    scheduler = scheduler_of(svc)
    assert (await must_schedule(svc, schedule_id)).next_run_at == at

    assert await scheduler.fire_due_async(at - timedelta(seconds=1)) == 0
    assert await scheduler.fire_due_async(at + timedelta(seconds=1)) == 1
    assert await scheduler.fire_due_async(at + timedelta(days=1)) == 0

    assert await fire_times(svc, schedule_id) == [at]
    schedule = await must_schedule(svc, schedule_id)
    assert (schedule.status, schedule.next_run_at, schedule.run_count) == (
        ScheduleStatus.COMPLETED,
        None,
        1,
    )
    completed = await svc.events.get_events_async(
        schedule_id=schedule_id, event_type=EventType.SCHEDULE_COMPLETED
    )
    assert len(completed) == 1


async def test_max_runs_completes_the_schedule_after_n_runs(svc: Services) -> None:
    one_by_one = await svc.queue.schedule_async(interval_schedule(MINUTE, T0, max_runs=3))
    at_once = await svc.queue.schedule_async(
        interval_schedule(MINUTE, T0, max_runs=4, misfire_policy="run_all")
    )
    scheduler = scheduler_of(svc)
    for now in ticks(T0, T0 + timedelta(minutes=10), MINUTE):
        await scheduler.fire_due_async(now)
    # All of at_once's missed runs arrive in one call: still only max_runs tasks.
    late = await svc.queue.schedule_async(
        interval_schedule(MINUTE, T0, max_runs=4, misfire_policy="run_all")
    )
    assert await scheduler.fire_due_async(T0 + timedelta(minutes=30)) == 4

    assert await fire_times(svc, one_by_one) == [T0, T0 + MINUTE, T0 + 2 * MINUTE]
    assert len(await fire_times(svc, at_once)) == 4
    assert await fire_times(svc, late) == [T0 + k * MINUTE for k in range(4)]
    for schedule_id, runs in ((one_by_one, 3), (at_once, 4), (late, 4)):
        schedule = await must_schedule(svc, schedule_id)
        assert (schedule.status, schedule.run_count, schedule.next_run_at) == (
            ScheduleStatus.COMPLETED,
            runs,
            None,
        )
    assert await scheduler.fire_due_async(T0 + timedelta(days=1)) == 0


async def test_paused_schedule_creates_nothing_and_resume_does_not_burst(svc: Services) -> None:
    # Real time here: pause and resume act at the current instant.
    now = utcnow()
    plain = await svc.queue.schedule_async(
        interval_schedule(MINUTE, now - timedelta(minutes=30), misfire_policy="run_all")
    )
    started = await svc.queue.schedule_async(
        Schedule(
            func=FUNC,
            schedule_type=ScheduleType.INTERVAL,
            interval=MINUTE,
            run_at=now - timedelta(hours=1),
            misfire_policy="run_all",
        )
    )
    scheduler = scheduler_of(svc)
    for schedule_id in (plain, started):
        paused = await svc.queue.pause_schedule_async(schedule_id)
        assert paused.status is ScheduleStatus.PAUSED
    assert await scheduler.fire_due_async(utcnow() + timedelta(hours=1)) == 0

    resumed_at = svc.storage.now()  # the clock schedules are timed by (the database's on PG)
    for schedule_id in (plain, started):
        schedule = await svc.queue.resume_schedule_async(schedule_id)
        assert schedule.status is ScheduleStatus.ACTIVE
        assert schedule.next_run_at is not None and schedule.next_run_at >= resumed_at
    assert await scheduler.fire_due_async(utcnow()) == 0
    for schedule_id in (plain, started):
        schedule = await must_schedule(svc, schedule_id)
        assert schedule.next_run_at is not None
        assert await scheduler.fire_due_async(schedule.next_run_at) == 1
        assert await fire_times(svc, schedule_id) == [schedule.next_run_at]


async def test_updating_an_interval_schedule_neither_refires_nor_blocks_others(
    svc: Services,
) -> None:
    schedule_id = await svc.queue.schedule_async(
        Schedule(func=FUNC, schedule_type=ScheduleType.INTERVAL, interval=MINUTE, run_at=T0)
    )
    scheduler = scheduler_of(svc)
    now = T0 + 10 * MINUTE + timedelta(seconds=30)
    assert await scheduler.fire_due_async(now) == 1  # run_once: T0 + 10 min
    await svc.queue.update_schedule_async(schedule_id, interval=2 * MINUTE)
    other = await svc.queue.schedule_async(interval_schedule(MINUTE, now))

    await scheduler.fire_due_async(now + timedelta(seconds=1))

    assert_once_each(await fire_times(svc, schedule_id))
    assert await fire_times(svc, other) == [now]


# --- misfires -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "late_by", "expected"),
    [
        # 10 minutes of missed runs; the latest missed one is 10 s or 45 s old.
        ("skip", timedelta(seconds=10), [10]),
        ("skip", timedelta(seconds=45), []),
        ("run_once", timedelta(seconds=45), [10]),
        ("run_all", timedelta(seconds=45), list(range(11))),
    ],
)
async def test_misfire_policies(
    svc: Services, policy: str, late_by: timedelta, expected: list[int]
) -> None:
    schedule_id = await svc.queue.schedule_async(
        interval_schedule(MINUTE, T0, misfire_policy=policy, misfire_grace=timedelta(seconds=30))
    )
    now = T0 + 10 * MINUTE + late_by

    assert await scheduler_of(svc).fire_due_async(now) == len(expected)

    assert await fire_times(svc, schedule_id) == [T0 + k * MINUTE for k in expected]
    schedule = await must_schedule(svc, schedule_id)
    # Missed runs are never fired later: the next run is the first one after now.
    assert schedule.next_run_at == T0 + 11 * MINUTE
    assert schedule.run_count == len(expected)
    if len(expected) < 11:
        warnings = [
            e
            for e in await svc.events.get_events_async(
                schedule_id=schedule_id, event_type=EventType.SCHEDULE_FIRED
            )
            if e.task_id is None
        ]
        assert [(e.data or {}).get("skipped") for e in warnings] == [11 - len(expected)]


async def test_run_all_catch_up_is_capped(svc: Services) -> None:
    schedule_id = await svc.queue.schedule_async(
        interval_schedule(MINUTE, T0, misfire_policy=MisfirePolicy.RUN_ALL)
    )
    now = T0 + 250 * MINUTE + timedelta(seconds=5)

    assert await scheduler_of(svc).fire_due_async(now) == MAX_CATCH_UP

    times = await fire_times(svc, schedule_id)
    assert len(times) == MAX_CATCH_UP
    assert_once_each(times)
    schedule = await must_schedule(svc, schedule_id)
    assert schedule.next_run_at is not None and schedule.next_run_at > now
    assert await scheduler_of(svc).fire_due_async(now) == 0


@pytest.mark.parametrize("policy", ["run_once", "skip"])
@pytest.mark.parametrize("kind", ["interval", "cron"])
async def test_far_behind_schedule_fires_its_latest_missed_time(
    svc: Services, kind: str, policy: str
) -> None:
    # More missed runs than the catch-up cap: run_once (and skip, whose latest run is
    # within the grace) fire the latest missed time, and the grid is kept.
    step = 5 * MINUTE
    fields: dict[str, Any] = {"misfire_policy": policy, "misfire_grace": timedelta(seconds=30)}
    if kind == "interval":
        schedule = interval_schedule(step, T0, **fields)
    else:
        schedule = cron_schedule("*/5 * * * *", "UTC", T0 - MINUTE, **fields)
    assert schedule.next_run_at == T0
    schedule_id = await svc.queue.schedule_async(schedule)
    latest = T0 + 3 * MAX_CATCH_UP * step
    now = latest + timedelta(seconds=10)

    assert await scheduler_of(svc).fire_due_async(now) == 1

    assert await fire_times(svc, schedule_id) == [latest]
    assert (await must_schedule(svc, schedule_id)).next_run_at == latest + step


# --- results of a schedule ----------------------------------------------------------------------


def schedule_worker(svc: Services, **options: Any) -> Worker:
    options.setdefault("run_scheduler", False)
    return Worker(
        svc.queue,
        svc.results,
        svc.events,
        allow_modules=[MODULE],
        run_maintenance=False,
        poll_interval=0.1,
        **options,
    )


async def test_get_latest_returns_the_newest_result_of_the_schedule(svc: Services) -> None:
    # Fire times in the (real) past, so that the tasks are ready to run now.
    start = utcnow() - timedelta(hours=1)
    schedule_id = await svc.queue.schedule_async(interval_schedule(MINUTE, start))
    other = await svc.queue.schedule_async(interval_schedule(MINUTE, start))
    scheduler = scheduler_of(svc)
    assert await svc.results.get_latest_async(schedule_id) is None

    previous: float | None = None
    for k in range(3):
        assert await scheduler.fire_due_async(start + k * MINUTE) == 2
        await schedule_worker(svc).run_until_complete_async()
        (task_time,) = (await fire_times(svc, schedule_id))[-1:]
        assert task_time == start + k * MINUTE
        latest = await svc.results.get_latest_async(schedule_id)
        assert latest is not None
        assert latest.schedule_id == schedule_id
        assert latest.success
        tasks = await svc.queue.list_tasks_async(limit=1000)
        newest = max(
            (t for t in tasks if t.schedule_id == schedule_id),
            key=lambda t: t.scheduled_for or start,
        )
        assert latest.task_id == newest.id
        if previous is not None:
            assert latest.result > previous
        previous = latest.result
    other_latest = await svc.results.get_latest_async(other)
    assert other_latest is not None and other_latest.schedule_id == other


async def test_worker_fires_due_schedules_and_runs_their_tasks(svc: Services) -> None:
    schedule_id = await svc.queue.schedule_async(
        interval_schedule(timedelta(hours=1), utcnow() - timedelta(seconds=1))
    )

    stats = await schedule_worker(svc, run_scheduler=True).run_until_complete_async()

    assert stats.completed == 1
    latest = await svc.results.get_latest_async(schedule_id)
    assert latest is not None and latest.success
    schedule = await must_schedule(svc, schedule_id)
    assert schedule.run_count == 1
