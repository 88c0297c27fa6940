"""The attrs records: defaults, validation at the edge, ids and instants."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from omniq._time import EPOCH, from_micros, new_id, require_aware, to_micros, to_timedelta
from omniq.errors import OmniQError, ValidationError
from omniq.models import (
    TASK_OPTION_KEYS,
    EventLevel,
    EventType,
    MisfirePolicy,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    Settings,
    Task,
    TaskEvent,
    TaskResult,
    TaskStatus,
)

FUNC = "tests.jobs:work"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
NAIVE = datetime(2026, 1, 2, 3, 4, 5)


def make_task(**kwargs: Any) -> Task:
    """A Task of FUNC; values given as ``Any`` so that tests may pass bad types."""
    return Task(func=FUNC, **kwargs)


def raises_field(field: str) -> Any:
    """Expect a ValidationError whose ``field`` (and message) name ``field``."""
    return pytest.raises(ValidationError, match=rf"^{field}: ")


# --- Task defaults ------------------------------------------------------------


def test_task_defaults() -> None:
    task = Task(func=FUNC)
    assert task.status is TaskStatus.PENDING
    assert task.queue_name == "default"
    assert task.func_args == ()
    assert task.func_kwargs == {}
    assert task.tags == ()
    assert task.priority == 0
    assert task.run_at == task.created_at
    assert task.created_at.tzinfo is not None
    assert task.ttl is None
    assert task.expires_at is None
    assert task.attempts == 0
    assert task.retry_count == 0
    assert task.max_retries == 3  # the seed schema's default
    assert task.retry_delay == timedelta(seconds=1)
    assert task.store_result is True
    assert task.serializer == "json"
    assert task.payload_error is None
    assert task.lease_token is None
    assert not task.is_final


def test_task_expires_at_is_created_at_plus_ttl() -> None:
    task = Task(func=FUNC, created_at=T0, ttl=timedelta(minutes=5))
    assert task.expires_at == T0 + timedelta(minutes=5)


def test_task_explicit_expires_at_wins_over_ttl() -> None:
    explicit = T0 + timedelta(hours=3)
    task = Task(func=FUNC, created_at=T0, ttl=timedelta(minutes=5), expires_at=explicit)
    assert task.expires_at == explicit


def test_task_run_at_defaults_to_created_at() -> None:
    assert Task(func=FUNC, created_at=T0).run_at == T0
    later = T0 + timedelta(hours=1)
    assert Task(func=FUNC, created_at=T0, run_at=later).run_at == later


def test_task_status_is_waiting_iff_depends_on() -> None:
    parent = new_id()
    waiting = Task(func=FUNC, depends_on=[parent, parent])
    assert waiting.status is TaskStatus.WAITING
    assert waiting.depends_on == (parent,)  # de-duplicated, order kept
    assert Task(func=FUNC).status is TaskStatus.PENDING
    assert Task(func=FUNC, depends_on=[]).status is TaskStatus.PENDING


def test_task_status_given_explicitly_is_kept_and_converted() -> None:
    assert Task(func=FUNC, status="running").status is TaskStatus.RUNNING
    assert Task(func=FUNC, depends_on=[new_id()], status="pending").status is TaskStatus.PENDING


def test_task_evolve_keeps_validation() -> None:
    task = Task(func=FUNC)
    moved = attrs.evolve(task, queue_name="other")
    assert moved.queue_name == "other"
    assert moved.id == task.id
    with raises_field("priority"):
        attrs.evolve(task, priority="high")  # type: ignore[arg-type]


def test_task_cannot_depend_on_itself() -> None:
    with raises_field("depends_on"):
        Task(func=FUNC, id="a", depends_on=["a"])


def test_task_is_final() -> None:
    for status in TaskStatus:
        assert Task(func=FUNC, status=status).is_final is status.is_final
    assert {s for s in TaskStatus if s.is_final} == {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.EXPIRED,
    }


def test_task_converters_normalise_containers() -> None:
    task = Task(func=FUNC, func_args=[1, "x"], func_kwargs={"k": [1]}, tags=["a", "b"])
    assert task.func_args == (1, "x")
    assert task.tags == ("a", "b")
    assert task.func_kwargs == {"k": [1]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("func_args", "abc"),
        ("func_args", {"a": 1}),
        ("func_args", 5),
        ("func_kwargs", [1, 2]),
        ("func_kwargs", {1: "x"}),
        ("tags", "one-string"),
        ("tags", [1]),
        ("priority", "1"),
        ("priority", True),
        ("priority", 2**63),
        ("queue_name", ""),
        ("queue_name", "x" * 201),
        ("queue_name", "a\x00b"),
        ("id", ""),
        ("name", "a\x00"),
        ("unique_key", 5),
        # Fields OmniQ sets itself are checked too when a record is built by hand:
        # their columns would refuse them with an engine's own error (or not at all).
        ("cancel_requested", "yes"),
        ("cancel_requested", 1),
        ("cancel_requested", None),
        ("lease_token", "x" * 65),
        ("lease_token", 5),
        ("schedule_id", ""),
        ("schedule_id", "x" * 65),
    ],
)
def test_task_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with raises_field(field):
        make_task(**{field: value})


# --- time --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "created_at",
        "run_at",
        "expires_at",
        "started_at",
        "completed_at",
        "scheduled_for",
        "lease_expires_at",
    ],
)
def test_task_rejects_naive_datetimes(field: str) -> None:
    with raises_field(field) as info:
        make_task(**{field: NAIVE})
    assert info.value.field == field
    assert "naive" in str(info.value)


def test_non_datetime_rejected_naming_field() -> None:
    with raises_field("run_at"):
        make_task(run_at="2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: Schedule(func=FUNC, schedule_type="timestamp", run_at=NAIVE), "run_at"),
        (
            lambda: Schedule(
                func=FUNC, schedule_type="cron", cron_expression="* * * * *", next_run_at=NAIVE
            ),
            "next_run_at",
        ),
        (lambda: TaskResult(task_id="t", status="success", completed_at=NAIVE), "completed_at"),
        (lambda: TaskResult(task_id="t", status="success", created_at=NAIVE), "created_at"),
        (lambda: TaskEvent(event_type="enqueued", timestamp=NAIVE), "timestamp"),
    ],
)
def test_other_models_reject_naive_datetimes(factory: Any, field: str) -> None:
    with raises_field(field):
        factory()


def test_aware_datetimes_in_other_zones_are_accepted() -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    local = T0.astimezone(plus_five)
    task = Task(func=FUNC, created_at=local)
    assert task.created_at == T0  # the same instant
    assert require_aware(local, "x").tzinfo is UTC


def test_require_aware_rejects_tzinfo_without_offset() -> None:
    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

        def tzname(self, dt: datetime | None) -> str | None:
            return None

        def dst(self, dt: datetime | None) -> timedelta | None:
            return None

    with raises_field("when"):
        require_aware(datetime(2026, 1, 1, tzinfo=NoOffset()), "when")


# --- durations and counts -----------------------------------------------------


@pytest.mark.parametrize("field", ["ttl", "retry_delay", "result_ttl", "timeout"])
def test_task_rejects_negative_durations(field: str) -> None:
    with raises_field(field):
        make_task(**{field: timedelta(seconds=-1)})


@pytest.mark.parametrize("field", ["ttl", "retry_delay", "timeout"])
def test_task_rejects_durations_that_are_not_timedeltas(field: str) -> None:
    with raises_field(field):
        make_task(**{field: 5})


@pytest.mark.parametrize("field", ["max_retries", "retry_count", "attempts"])
def test_task_rejects_negative_counts(field: str) -> None:
    with raises_field(field):
        make_task(**{field: -1})
    with raises_field(field):
        make_task(**{field: 1.5})


def test_task_zero_timeout_rejected_zero_ttl_allowed() -> None:
    with raises_field("timeout"):
        Task(func=FUNC, timeout=timedelta(0))
    task = Task(func=FUNC, created_at=T0, ttl=timedelta(0))
    assert task.expires_at == T0


def test_to_timedelta_edge_converter() -> None:
    assert to_timedelta(2, "ttl") == timedelta(seconds=2)
    assert to_timedelta(0.5, "ttl") == timedelta(milliseconds=500)
    assert to_timedelta(timedelta(minutes=1), "ttl") == timedelta(minutes=1)
    assert to_timedelta(0, "ttl") == timedelta(0)
    for bad in (-1, float("nan"), float("inf"), True, "5", None, 10**20):
        with raises_field("ttl"):
            to_timedelta(bad, "ttl")
    with raises_field("interval"):
        to_timedelta(0, "interval", allow_zero=False)


# --- function references --------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["pkg.mod:func", "m:f", "a.b.c:Outer.Inner.method", "_private:_f", "mod_1:F2"],
)
def test_good_func_references(ref: str) -> None:
    assert Task(func=ref).func == ref
    assert Task(func=FUNC, callback=ref).callback == ref


@pytest.mark.parametrize(
    "ref",
    [
        "nocolon",
        "mod:",
        ":func",
        "mod:f.<locals>.g",
        "mod:<lambda>",
        "1mod:f",
        "mod:1f",
        "mod..sub:f",
        "mod:f:g",
        "mod.:f",
        "mod:f.",
        "mod f:g",
        "",
        None,
        42,
    ],
)
def test_bad_func_references_rejected(ref: Any) -> None:
    with raises_field("func"):
        Task(func=ref)
    if ref is not None:
        with raises_field("callback"):
            Task(func=FUNC, callback=ref)


def test_callback_may_be_none() -> None:
    assert Task(func=FUNC, callback=None).callback is None


# --- enums ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "field", "enum_name"),
    [
        (lambda: Task(func=FUNC, status="bogus"), "status", "TaskStatus"),
        (lambda: Task(func=FUNC, status="PENDING"), "status", "TaskStatus"),
        (lambda: TaskEvent(event_type="nope"), "event_type", "EventType"),
        (lambda: TaskEvent(event_type="enqueued", level="loud"), "level", "EventLevel"),
        (lambda: TaskResult(task_id="t", status="ok"), "status", "ResultStatus"),
        (lambda: Schedule(func=FUNC, schedule_type="weekly"), "schedule_type", "ScheduleType"),
        (
            lambda: Schedule(
                func=FUNC, schedule_type="interval", interval=timedelta(1), status="zombie"
            ),
            "status",
            "ScheduleStatus",
        ),
        (
            lambda: Schedule(
                func=FUNC,
                schedule_type="interval",
                interval=timedelta(1),
                misfire_policy="sometimes",
            ),
            "misfire_policy",
            "MisfirePolicy",
        ),
    ],
)
def test_unknown_enum_strings_rejected(factory: Any, field: str, enum_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        factory()
    assert isinstance(info.value, OmniQError)
    assert info.value.field == field  # the field, not the enum class
    assert str(info.value).startswith(f"{field}: unknown {enum_name} ")


def test_enum_strings_converted() -> None:
    event = TaskEvent(event_type="completed", level="warning")
    assert event.event_type is EventType.COMPLETED
    assert event.level is EventLevel.WARNING
    assert TaskResult(task_id="t", status="error").status is ResultStatus.ERROR
    schedule = Schedule(
        func=FUNC, schedule_type="interval", interval=timedelta(seconds=1), misfire_policy="skip"
    )
    assert schedule.misfire_policy is MisfirePolicy.SKIP
    assert schedule.status is ScheduleStatus.ACTIVE


# --- Schedule --------------------------------------------------------------------


def test_schedule_cron_requires_expression() -> None:
    with raises_field("cron_expression"):
        Schedule(func=FUNC, schedule_type=ScheduleType.CRON)


@pytest.mark.parametrize("expr", ["61 * * * *", "not a cron", "* * *", "", "* * * * * * * *"])
def test_schedule_invalid_cron_rejected(expr: str) -> None:
    with raises_field("cron_expression"):
        Schedule(func=FUNC, schedule_type="cron", cron_expression=expr)


def test_schedule_valid_cron() -> None:
    schedule = Schedule(
        func=FUNC, schedule_type="cron", cron_expression="*/5 * * * *", timezone="Europe/Paris"
    )
    assert schedule.schedule_type is ScheduleType.CRON
    assert schedule.timezone == "Europe/Paris"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "UTC+25"])
def test_schedule_unknown_timezone_rejected(zone: str) -> None:
    with raises_field("timezone"):
        Schedule(func=FUNC, schedule_type="cron", cron_expression="* * * * *", timezone=zone)


@pytest.mark.parametrize("interval", [None, timedelta(0)])
def test_schedule_interval_must_be_positive(interval: timedelta | None) -> None:
    with raises_field("interval"):
        Schedule(func=FUNC, schedule_type="interval", interval=interval)


def test_schedule_negative_interval_rejected() -> None:
    with raises_field("interval"):
        Schedule(func=FUNC, schedule_type="interval", interval=timedelta(seconds=-5))


def test_schedule_timestamp_requires_run_at() -> None:
    with raises_field("run_at"):
        Schedule(func=FUNC, schedule_type="timestamp")
    one_shot = Schedule(func=FUNC, schedule_type="timestamp", run_at=T0)
    assert one_shot.run_at == T0


def test_schedule_unknown_task_option_rejected() -> None:
    with raises_field("task_options") as info:
        Schedule(
            func=FUNC,
            schedule_type="interval",
            interval=timedelta(seconds=1),
            task_options={"priority": 1, "colour": "red"},
        )
    assert "colour" in str(info.value)


def test_schedule_known_task_options_accepted() -> None:
    options = dict.fromkeys(TASK_OPTION_KEYS)
    schedule = Schedule(
        func=FUNC, schedule_type="interval", interval=timedelta(seconds=1), task_options=options
    )
    assert set(schedule.task_options) == TASK_OPTION_KEYS


def test_schedule_bad_func_and_negative_counts() -> None:
    with raises_field("func"):
        Schedule(func="lambda", schedule_type="interval", interval=timedelta(seconds=1))
    with raises_field("max_runs"):
        Schedule(func=FUNC, schedule_type="interval", interval=timedelta(seconds=1), max_runs=-1)
    with raises_field("misfire_grace"):
        Schedule(
            func=FUNC,
            schedule_type="interval",
            interval=timedelta(seconds=1),
            misfire_grace=timedelta(seconds=-1),
        )


# --- TaskResult / TaskEvent / Settings ------------------------------------------


def test_result_expires_at_default() -> None:
    result = TaskResult(task_id="t", status="success", created_at=T0, ttl=timedelta(hours=1))
    assert result.expires_at == T0 + timedelta(hours=1)
    assert result.success
    assert TaskResult(task_id="t", status="success").expires_at is None
    assert not TaskResult(task_id="t", status="error").success


def test_result_and_event_number_validation() -> None:
    with raises_field("ttl"):
        TaskResult(task_id="t", status="success", ttl=timedelta(seconds=-1))
    with raises_field("execution_time"):
        TaskResult(task_id="t", status="success", execution_time=float("nan"))
    with raises_field("execution_time"):
        TaskEvent(event_type="completed", execution_time=float("inf"))
    with raises_field("retry_count"):
        TaskEvent(event_type="retry", retry_count=-1)


def test_event_defaults() -> None:
    event = TaskEvent(event_type=EventType.ENQUEUED)
    assert event.id is None
    assert event.level is EventLevel.INFO
    assert event.timestamp.tzinfo is not None


def test_settings_defaults_and_validation() -> None:
    settings = Settings()
    assert settings.sqlite_synchronous == "NORMAL"
    assert settings.allow_pickle is False
    assert settings.lease_duration > timedelta(0)
    with raises_field("lease_duration"):
        Settings(lease_duration=timedelta(0))
    with raises_field("busy_timeout"):
        Settings(busy_timeout=timedelta(seconds=-1))
    with raises_field("default_max_retries"):
        Settings(default_max_retries=-1)
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        Settings(sqlite_synchronous="OFF")  # type: ignore[arg-type]


# --- ids -------------------------------------------------------------------------


def test_new_id_sorts_by_creation_order() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids


def test_new_id_is_a_uuid7() -> None:
    import uuid

    value = uuid.UUID(new_id())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    millis = value.int >> 80
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert abs(now_ms - millis) < 60_000


def test_new_id_order_across_threads() -> None:
    import threading

    out: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    counter = iter(range(10**9))
    lock = threading.Lock()

    def make(slot: list[tuple[int, str]]) -> None:
        for _ in range(2_000):
            with lock:  # the global creation order is the order the lock hands out
                slot.append((next(counter), new_id()))

    threads = [threading.Thread(target=make, args=(slot,)) for slot in out]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = [value for _, value in sorted(pair for slot in out for pair in slot)]
    assert sorted(ordered) == ordered
    assert len(set(ordered)) == len(ordered)


# --- microseconds ---------------------------------------------------------------------


@hypothesis_settings(database=None)  # no .hypothesis/ example store in the checkout
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=13, minutes=45))]
        ),
    )
)
def test_micros_round_trip(value: datetime) -> None:
    micros = to_micros(value)
    back = from_micros(micros)
    assert back == value
    assert back.tzinfo is UTC
    assert back.utcoffset() == timedelta(0)


@hypothesis_settings(database=None)  # no .hypothesis/ example store in the checkout
@given(st.integers(min_value=-(10**15), max_value=10**17))
def test_micros_round_trip_from_integers(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


def test_micros_known_values_and_order() -> None:
    assert to_micros(EPOCH) == 0
    assert to_micros(EPOCH + timedelta(microseconds=1)) == 1
    assert to_micros(EPOCH - timedelta(microseconds=1)) == -1
    assert to_micros(datetime(2000, 1, 1, tzinfo=UTC)) == 946_684_800_000_000
    a, b = T0, T0 + timedelta(microseconds=1)
    assert to_micros(a) < to_micros(b)


def test_bad_ttl_or_created_at_types_name_the_field() -> None:
    with raises_field("created_at"):
        make_task(created_at="2026-01-01", ttl=timedelta(seconds=1))
    with raises_field("created_at"):
        TaskResult(task_id="t", status="success", created_at=0, ttl=timedelta(seconds=1))  # type: ignore[arg-type]
    with raises_field("ttl"):
        TaskResult(task_id="t", status="success", ttl=60)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_new_ids_of_a_forked_child_differ_from_its_parents() -> None:
    new_id()  # the parent holds buffered random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        os.write(write, " ".join(new_id() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(200)}
    assert len(child) == 200 and not child & parent
    # Same millisecond, same counter start: only the random bits tell them apart.
    assert {c[24:] for c in child}.isdisjoint({p[24:] for p in parent})


def test_a_process_forked_while_another_thread_makes_an_id_makes_ids() -> None:
    # The id lock held by another thread at the fork: that thread does not exist in
    # the child to release it, and the child's first id used to wait forever.
    import os
    import signal
    import threading

    import omniq._time as clock

    held, release = threading.Event(), threading.Event()

    def make_an_id_slowly() -> None:
        with clock._uuid_lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=make_an_id_slowly)
    thread.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            signal.alarm(10)  # a child that hangs is killed: the test fails, not hangs
            ok = new_id() != new_id()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.WIFEXITED(status), "the forked child hung making an id"
    assert os.WEXITSTATUS(status) == 0
