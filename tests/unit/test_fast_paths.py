"""Hot-path helpers give exactly what the general code gives.

- Tasks read back equal the validated record; odd values get the
  validators' error naming the field.
- Sync functions run in the thread pool hand their outcomes to the loop in
  batches; cancellation before start and timeouts behave as before.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from omniq.db.engine import Dialect
from omniq.errors import DuplicateTask, InvalidRow, SerializationError, ValidationError
from omniq.models import ResultStatus, Task, TaskResult, TaskStatus
from omniq.models.task import task_started, task_traced
from omniq.repositories.results import ResultRepository
from omniq.repositories.tasks import TaskRepository
from omniq.worker.executors import DaemonThreadPool, Executor

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _values(task: Task) -> dict[str, Any]:
    """A task's values as the claim path has them after reading a row."""
    values = {f.name: getattr(task, f.name) for f in attrs.fields(Task)}
    values["status"] = task.status.value
    values["tags"] = list(task.tags)
    values["depends_on"] = list(task.depends_on)
    return values


_TASKS = TaskRepository(Dialect(name="sqlite", skip_locked=False, single_writer=True))


def read_back(values: dict[str, Any]) -> Task:
    """What a claim's reader builds from a returned row holding ``values`` (the
    arguments encoded into the payload column, as stored)."""
    row = dict(values)
    args = (row.pop("func_args", ()), row.pop("func_kwargs", {}), row.pop("callback_args", ()))
    subject = f"{row.get('func')}\n{row.get('callback') or ''}"
    row["payload"] = _TASKS.codec.encode_call(row.get("serializer", "json"), *args, subject=subject)
    (task,) = _TASKS.claimed_rows(list(row), [list(row.values())], None)
    return task


SAMPLES = [
    Task(func="pkg.mod:f"),
    Task(
        func="pkg.mod:f",
        func_args=(1, "two", [3]),
        func_kwargs={"k": {"v": None}},
        queue_name="emails",
        name="n",
        description="d",
        tags=("a", "b"),
        priority=-5,
        created_at=NOW,
        run_at=NOW + timedelta(seconds=3),
        ttl=timedelta(minutes=1),
        depends_on=("x", "y"),
        started_at=NOW,
        callback="pkg.mod:cb",
        callback_args=(7,),
        retry_count=2,
        max_retries=3,
        retry_delay=timedelta(0),
        result_ttl=timedelta(days=1),
        store_result=False,
        timeout=timedelta(seconds=30),
        unique_key="u",
        schedule_id="s",
        scheduled_for=NOW,
        attempts=3,
        lease_token="tok",
        lease_expires_at=NOW,
        worker_id="w",
        last_error="boom",
        cancel_requested=True,
        status=TaskStatus.RUNNING,
    ),
]


@pytest.mark.parametrize("task", SAMPLES, ids=["defaults", "every-field"])
def test_a_task_read_back_equals_the_validated_record(task: Task) -> None:
    fast = read_back(_values(task))
    assert fast == task
    assert fast == Task(**_values(task))
    assert type(fast.tags) is tuple and type(fast.depends_on) is tuple
    assert fast.status is task.status
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.priority = 1


def test_a_row_whose_column_names_are_distinct_strings_reads_back_the_same() -> None:
    # Column names read from the database are equal to the field names but are
    # other string objects; the record must not depend on which.
    task = SAMPLES[1]
    values = {"".join(list(key)): value for key, value in _values(task).items()}
    assert all(a is not b for a, b in zip(values, _values(task), strict=True))
    assert read_back(values) == task
    values["no_such_field"] = 1
    with pytest.raises(InvalidRow, match="no_such_field") as refused:
        read_back(values)
    assert isinstance(refused.value.__cause__, TypeError)


@pytest.mark.parametrize("task", SAMPLES, ids=["defaults", "every-field"])
def test_a_task_row_is_plain_data_the_collector_does_not_track(task: Task) -> None:
    # A batch of rows waits for its write; rows the garbage collector tracks
    # made every full collection walk them (see README, "How the figures got here").
    row = _TASKS.to_row(task)
    assert all(type(key) is str for key in row)
    assert row["status"] == task.status.value and type(row["status"]) is str
    assert not gc.is_tracked(row)


def test_halves_of_a_surrogate_pair_in_two_fields_are_refused_naming_the_first() -> None:
    # The text columns are checked together; two lone halves side by side are
    # still two lone surrogates, and the error names the field that holds one.
    task = Task(func="pkg.mod:f", name="a \ud83d", description="\ude00 b")
    with pytest.raises(SerializationError, match=r"^name: "):
        _TASKS.to_row(task)
    with pytest.raises(SerializationError, match=r"^tags: "):
        _TASKS.to_row(Task(func="pkg.mod:f", tags=("ok", "\udce9")))


def test_a_text_field_holding_no_text_is_refused_naming_it() -> None:
    # Fields the record does not validate (set by OmniQ itself) still reach a
    # column only as text.
    with pytest.raises(ValidationError, match=r"^worker_id: expected text, got int"):
        _TASKS.to_row(Task(func="pkg.mod:f", worker_id=5))  # type: ignore[arg-type]


@pytest.mark.parametrize("task", SAMPLES, ids=["defaults", "every-field"])
def test_a_started_task_equals_what_evolve_makes(task: Task) -> None:
    at = NOW + timedelta(seconds=1)
    started = task_started(task, at)
    assert started == attrs.evolve(task, started_at=at, attempts=task.attempts + 1)
    assert started.payload_error == task.payload_error  # eq=False: compared apart
    assert started.started_at == at and started.attempts == task.attempts + 1
    assert task.started_at != at  # the record it came from is unchanged
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        started.attempts = 0


#: Every field of a Task set (payload_error too, which == does not compare).
FULL = attrs.evolve(
    SAMPLES[1],
    completed_at=NOW,
    lost_count=1,
    trace_context='{"traceparent":"old"}',
    concurrency_key="tenant",
    concurrency_max=2,
    rate_key="api",
    rate_limit=5,
    rate_period=timedelta(seconds=1),
    workflow_id="wf",
    payload_error="SerializationError: x",
)


def _fields(task: Task) -> dict[str, Any]:
    return {f.name: getattr(task, f.name) for f in attrs.fields(type(task))}


@pytest.mark.parametrize("task", [SAMPLES[0], FULL], ids=["defaults", "every-field"])
def test_a_traced_task_equals_what_evolve_makes(task: Task) -> None:
    context = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
    traced = task_traced(task, context)
    evolved = attrs.evolve(task, trace_context=context)
    assert type(traced) is Task
    assert _fields(traced) == _fields(evolved)  # payload_error included
    assert traced.trace_context == context and task.trace_context != context
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        traced.trace_context = None
    # Checked as evolve checks it: the field's own validator, naming the field.
    for bad in (5, "nul\x00"):
        with pytest.raises(ValidationError, match=r"^trace_context"):
            task_traced(task, bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"^trace_context"):
            attrs.evolve(task, trace_context=bad)
    started = task_started(task, NOW)
    assert _fields(started) == _fields(
        attrs.evolve(task, started_at=NOW, attempts=task.attempts + 1)
    )


def test_a_subclass_of_task_keeps_its_type_and_fields_when_traced_or_started() -> None:
    @attrs.frozen
    class Billed(Task):
        account: str = "acme"

    task = Billed(func="pkg.mod:f", account="umbrella")
    traced = task_traced(task, "ctx")
    started = task_started(task, NOW)
    assert type(traced) is Billed and traced.account == "umbrella"
    assert traced == attrs.evolve(task, trace_context="ctx")
    assert type(started) is Billed and started.account == "umbrella"
    assert started.attempts == task.attempts + 1 and started.started_at == NOW


def test_a_start_time_must_be_an_aware_instant() -> None:
    task = SAMPLES[0]
    with pytest.raises(ValidationError, match="started_at"):
        task_started(task, datetime(2026, 1, 1))  # naive
    with pytest.raises(ValidationError, match="started_at"):
        task_started(task, None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="attempts"):
        task_started(attrs.evolve(task, attempts=2**31 - 1), NOW)  # past its column


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("status", "bogus", "TaskStatus"),
        ("func", "not a reference", "func"),
        ("callback", "nope", "callback"),
        ("retry_count", -1, "retry_count"),
        ("attempts", 2**31, "attempts"),
        ("priority", "high", "priority"),
        ("created_at", datetime(2026, 1, 1), "created_at"),
        ("ttl", timedelta(seconds=-1), "ttl"),
        ("tags", "abc", "tags"),
        ("tags", [1], "tags"),
        ("depends_on", ["me"], "depends_on"),
        ("timeout", timedelta(0), "timeout"),
        ("name", 5, "name"),
        ("store_result", 1, "store_result"),
    ],
)
def test_odd_values_read_back_get_the_validators_error(field: str, value: Any, named: str) -> None:
    values = _values(Task(func="pkg.mod:f", id="me"))
    values[field] = value
    # The row is refused (a claim quarantines it) with the validator's error naming
    # the field.
    with pytest.raises(InvalidRow, match=f"task 'me' cannot be read: .*{named}") as refused:
        read_back(values)
    assert isinstance(refused.value.__cause__, ValidationError)
    assert named in str(refused.value.__cause__)


def test_duplicate_dependencies_read_back_are_deduplicated_as_on_write() -> None:
    values = _values(Task(func="pkg.mod:f"))
    values["depends_on"] = ["a", "a", "b"]
    assert read_back(values).depends_on == ("a", "b")


def test_an_aware_non_utc_instant_read_back_is_kept_as_the_same_instant() -> None:
    values = _values(Task(func="pkg.mod:f"))
    values["created_at"] = NOW.astimezone(timezone(timedelta(hours=5)))
    assert read_back(values).created_at == NOW


# --- the thread pool's loop futures --------------------------------------------------------


async def test_many_sync_calls_deliver_their_own_outcomes() -> None:
    pool = DaemonThreadPool(4)
    loop = asyncio.get_running_loop()

    def square(i: int) -> int:
        if i % 7 == 0:
            raise ValueError(f"bad {i}")
        return i * i

    futures = [pool.call_async(loop, lambda i=i: square(i)) for i in range(200)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i % 7 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == f"bad {i}"
        else:
            assert outcome == i * i
    pool.shutdown()


async def test_stop_iteration_from_a_sync_task_becomes_a_runtime_error() -> None:
    pool = DaemonThreadPool(1)

    def stop() -> None:
        raise StopIteration("done")

    with pytest.raises(RuntimeError, match="StopIteration"):
        await pool.call_async(asyncio.get_running_loop(), stop)
    pool.shutdown()


async def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    pool = DaemonThreadPool(1)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    ran: list[str] = []
    blocker = pool.call_async(loop, lambda: release.wait(10))
    queued = pool.call_async(loop, lambda: ran.append("queued"))
    queued.cancel()
    release.set()
    assert await blocker is True
    after = pool.call_async(loop, lambda: ran.append("after"))
    await after  # the single thread took the cancelled call before this one
    assert ran == ["after"]
    pool.shutdown()


async def test_a_sync_task_past_its_timeout_fails_and_its_late_result_is_dropped() -> None:
    executor = Executor("async", threads=2)
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "late"

    with pytest.raises(TimeoutError):
        await executor.run(slow, "x:slow", (), {}, 0.05)
    release.set()
    # The pool keeps working after the abandoned call returns.
    assert await executor.run(lambda: "next", "x:next", (), {}, 5) == "next"
    executor.shutdown()


async def test_an_async_task_past_its_timeout_is_cancelled() -> None:
    executor = Executor("async", threads=1)
    cancelled = asyncio.Event()

    async def sleeper() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await executor.run(sleeper, "x:sleeper", (), {}, 0.05)
    assert cancelled.is_set()
    executor.shutdown()


# --- the success result row ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "value"),
    [
        (SAMPLES[0], None),
        (attrs.evolve(SAMPLES[1], result_ttl=timedelta(hours=2)), {"rows": [1, 2]}),
        (attrs.evolve(SAMPLES[1], result_ttl=None, worker_id=None), "text"),
        (attrs.evolve(SAMPLES[1], result_ttl=timedelta.max), 3),  # expiry past 9999: never
    ],
)
def test_the_success_row_equals_the_row_of_the_result_record(task: Task, value: Any) -> None:
    repo = ResultRepository(Dialect(name="sqlite", skip_locked=False, single_writer=True))
    kwargs = {"now": NOW, "execution_time": 0.25, "worker_id": None}
    record = TaskResult(
        task_id=task.id,
        status=ResultStatus.SUCCESS,
        result=value,
        schedule_id=task.schedule_id,
        created_at=NOW,
        started_at=task.started_at,
        completed_at=NOW,
        ttl=task.result_ttl,
        execution_time=0.25,
        worker_id=task.worker_id,
        retry_count=task.retry_count,
        serializer=task.serializer,
    )
    assert repo.success_row(task, value, **kwargs) == repo.to_row(record)
    assert repo.success_row(task, value, **{**kwargs, "worker_id": "w9"})["worker_id"] == "w9"


async def test_blocking_sync_calls_each_get_a_thread_up_to_the_limit() -> None:
    pool = DaemonThreadPool(6)
    loop = asyncio.get_running_loop()
    await pool.call_async(loop, lambda: None)  # one thread exists and is idle now
    together = threading.Barrier(6, timeout=10)
    # Six calls that only return once all six run at the same time.
    results = await asyncio.gather(*(pool.call_async(loop, together.wait) for _ in range(6)))
    assert sorted(results) == list(range(6))
    pool.shutdown()


def test_a_partial_row_read_back_gets_the_records_defaults() -> None:
    values = _values(SAMPLES[1])
    del values["lease_token"], values["worker_id"]
    task = read_back(values)
    assert task.lease_token is None and task.worker_id is None
    assert task == attrs.evolve(SAMPLES[1], lease_token=None, worker_id=None)


def test_rows_bound_by_position_store_what_named_binding_stores() -> None:
    """SQLite's many-row path binds each row by position: every column gets its own
    value whatever the order of the row's keys, columns NULL in every row are left
    out (their default applies), and an upsert's later row replaces the earlier."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite

    from omniq.db.driver_rows import DriverRows

    meta = sa.MetaData()
    table = sa.Table(
        "t",
        meta,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("z", sa.Integer, nullable=True),
        sa.Column("a", sa.String, nullable=False),
        sa.Column("doc", sa.JSON, nullable=True),
        sa.Column("n", sa.Integer, nullable=True),
    )
    ins = sqlite.insert(table)
    upsert = ins.on_conflict_do_update(
        index_elements=[table.c.id], set_={"a": ins.excluded.a, "z": ins.excluded.z}
    )
    columns = [(c.key, c.type) for c in table.c]
    engine = sa.create_engine("sqlite://")
    meta.create_all(engine)
    with engine.begin() as conn:
        DriverRows(table.insert(), columns).execute(
            conn,
            [
                {"n": None, "doc": {"k": [1]}, "a": "x", "z": 7, "id": "1"},
                {"id": "2", "a": "y", "z": None, "doc": None, "n": None},
            ],
        )
        DriverRows(upsert, columns).execute(
            conn,
            [
                {"id": "2", "z": 5, "a": "first", "doc": None, "n": None},
                {"a": "second", "id": "2", "n": None, "doc": None, "z": 6},
            ],
        )
        stored = conn.execute(sa.select(table).order_by(table.c.id)).all()
    assert [tuple(row) for row in stored] == [
        ("1", 7, "x", {"k": [1]}, None),
        ("2", 6, "second", None, None),
    ]


def test_a_statement_run_by_the_driver_reads_what_sqlalchemy_reads(tmp_path: Any) -> None:
    """SQLite's claim goes to the driver itself: every returned column comes back
    converted as SQLAlchemy's own execution converts it (instants, durations,
    JSON, booleans, NULLs), parameters are bound as OmniQ stores them, literals the
    statement carries are bound too, and the claim returns the same Tasks."""
    import sqlalchemy as sa

    from omniq.db.driver_query import DriverQuery
    from omniq.db.engine import sqlite_writer_engine
    from omniq.db.schema import metadata
    from omniq.db.schema import tasks as t
    from omniq.models.settings import Settings

    engine = sqlite_writer_engine(sa.make_url(f"sqlite:///{tmp_path / 'q.db'}"), Settings())
    metadata.create_all(engine)
    repo = _TASKS
    touch = (
        sa.update(t)
        .where(t.c.id == sa.bindparam("target"), t.c.status == TaskStatus.PENDING.value)
        .values(lease_expires_at=sa.bindparam("until", type_=t.c.lease_expires_at.type))
        .returning(*t.c)
    )
    driver = DriverQuery.of(touch)
    assert driver is not None
    sample = attrs.evolve(
        SAMPLES[1],
        status=TaskStatus.PENDING,
        tags=("a", "b"),
        ttl=timedelta(minutes=5),
        store_result=False,
        lease_token=None,
        worker_id=None,
        lease_expires_at=None,
        depends_on=(),
        created_at=NOW - timedelta(hours=1),
        run_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(hours=1),
        started_at=None,
        attempts=0,
        schedule_id=None,
        scheduled_for=None,
        workflow_id=None,
    )
    with engine.begin() as conn:
        repo.insert_many(conn, [sample])
        params = {"target": sample.id, "until": NOW}
        by_driver = driver.execute(conn, params)
        by_sqlalchemy = [list(row) for row in conn.execute(touch, params).all()]
        assert driver.keys == [c.name for c in t.c]
        assert by_driver == by_sqlalchemy and len(by_driver) == 1
        row = dict(zip(driver.keys, by_driver[0], strict=True))
        assert row["lease_expires_at"] == NOW and row["ttl"] == timedelta(minutes=5)
        assert row["tags"] == ["a", "b"] and row["store_result"] is False
        # A pending task with no lease claimed by the driver: the Task SQLAlchemy reads.
        claimed = repo.claim(
            conn, queues=None, n=5, now=NOW, token="tok", lease_until=NOW, worker_id="w"
        )
        assert [task.id for task in claimed] == [sample.id]
        assert claimed[0] == attrs.evolve(
            sample,
            status=TaskStatus.RUNNING,
            lease_token="tok",
            lease_expires_at=NOW,
            worker_id="w",
            started_at=NOW,
            attempts=sample.attempts + 1,
        )


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(tmp_path: Any) -> None:
    import sqlalchemy as sa

    from omniq.db.driver_query import DriverQuery
    from omniq.errors import DatabaseError
    from omniq.repositories._base import translate_errors

    meta = sa.MetaData()
    table = sa.Table("gone", meta, sa.Column("id", sa.Integer, primary_key=True))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    meta.create_all(engine)
    stmt = sa.update(table).values(id=table.c.id).returning(table.c.id)
    driver = DriverQuery.of(stmt)
    assert driver is not None
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE gone")
        with pytest.raises(sa.exc.OperationalError, match="no such table: gone") as raised:
            driver.execute(conn, {})
        assert raised.value.statement is not None and "UPDATE gone" in raised.value.statement
        with pytest.raises(DatabaseError, match="no such table"), translate_errors("touch"):
            driver.execute(conn, {})


def test_a_statement_with_an_expanding_in_stays_with_sqlalchemy() -> None:
    import sqlalchemy as sa

    from omniq.db.driver_query import DriverQuery
    from omniq.db.schema import tasks as t

    stmt = (
        sa.update(t)
        .where(t.c.queue_name.in_(sa.bindparam("queues", expanding=True)))
        .values(status="pending")
        .returning(t.c.id)
    )
    assert DriverQuery.of(stmt) is None
    postgresql = Dialect(name="postgresql", skip_locked=True, single_writer=False)
    assert postgresql.driver_query(stmt) is None


async def test_an_in_memory_database_claims_through_aiosqlites_driver_too() -> None:
    """In memory there is no writer thread: bodies run on the aiosqlite engine's
    one connection, whose driver (aiosqlite's adapter) takes the claim and the
    inserts the same way."""
    from omniq.services import Services

    services = await Services.open_async("sqlite+aiosqlite://")
    try:
        queue = services.queue
        ids = [await queue.enqueue_async("tests.worker_tasks:add_sync", [i, 1]) for i in range(3)]
        claimed = await queue.dequeue_many_async(5, worker_id="w")
        assert sorted(task.id for task in claimed) == sorted(ids)
        assert all(task.status is TaskStatus.RUNNING and task.worker_id == "w" for task in claimed)
        statuses = await queue.settle_completions_async(
            [(task, {"sum": 1}, 0.001) for task in claimed], worker_id="w"
        )
        assert statuses == [TaskStatus.COMPLETED] * 3
        assert await queue.dequeue_many_async(5, worker_id="w") == []
    finally:
        await services.close_async()


def test_a_driver_statement_begins_a_transaction_and_reports_a_lost_connection(
    tmp_path: Any,
) -> None:
    """As SQLAlchemy's execution does: a statement on a connection with no
    transaction begins one (a rollback undoes it), and a driver connection found
    closed invalidates the Connection and is reported as a lost connection."""
    import sqlalchemy as sa

    from omniq.db.driver_query import DriverQuery
    from omniq.errors import DatabaseUnavailable
    from omniq.repositories._base import translate_errors

    meta = sa.MetaData()
    table = sa.Table("n", meta, sa.Column("id", sa.Integer, primary_key=True))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1}])
    bump = sa.update(table).values(id=table.c.id + 1).returning(table.c.id)
    driver = DriverQuery.of(bump)
    assert driver is not None
    with engine.connect() as conn:
        assert not conn.in_transaction()
        assert driver.execute(conn, {}) == [[2]]
        assert conn.in_transaction()
        conn.rollback()
        assert conn.execute(sa.select(table.c.id)).scalar_one() == 1
        conn.rollback()
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        dbapi_connection.close()  # the driver's connection goes away under us
        with pytest.raises(DatabaseUnavailable, match="connection lost"), translate_errors("bump"):
            driver.execute(conn, {})
        assert conn.invalidated


def test_omniqs_own_sqlite_connections_send_their_writes_to_the_driver(tmp_path: Any) -> None:
    """On an engine OmniQ created, ``BEGIN IMMEDIATE`` and the task INSERTs go to
    the driver (SQLAlchemy's cursor events do not see them); on the application's
    engine the same writes go through SQLAlchemy. Both store the same row, and a
    refused INSERT or BEGIN raises the same SQLAlchemy error either way."""
    import sqlite3

    import sqlalchemy as sa

    from omniq.db.engine import sqlite_writer_engine
    from omniq.db.schema import metadata, tasks
    from omniq.models.settings import Settings

    path = tmp_path / "own.db"
    own = sqlite_writer_engine(
        sa.make_url(f"sqlite:///{path}"), Settings(busy_timeout=timedelta(milliseconds=1))
    )
    app = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(own)
    seen: dict[str, list[str]] = {"own": [], "app": []}
    for name, engine in (("own", own), ("app", app)):

        def record(*args: Any, into: list[str] = seen[name]) -> None:
            into.append(args[2].split(None, 1)[0].upper())

        sa.event.listen(engine, "before_cursor_execute", record)
    base = attrs.evolve(SAMPLES[0], depends_on=(), status=TaskStatus.PENDING)
    mine, theirs = attrs.evolve(base, id="t-own"), attrs.evolve(base, id="t-app")
    errors = []
    try:
        for engine, task in ((own, mine), (app, theirs)):
            with engine.begin() as conn:
                _TASKS.insert_many(conn, [task])
            with engine.connect() as conn:
                with pytest.raises(DuplicateTask) as raised:
                    _TASKS.insert_many(conn, [task])
                cause = raised.value.__cause__
                assert isinstance(cause, sa.exc.IntegrityError)
                errors.append(str(cause.orig))
        assert "INSERT" not in seen["own"] and "BEGIN" not in seen["own"]
        assert "INSERT" in seen["app"]
        # The claim too: by the driver on OmniQ's own connection, through
        # SQLAlchemy on the application's (each claims one of the two tasks).
        claimed = []
        due = datetime.now(UTC) + timedelta(minutes=1)
        for engine in (own, app):
            with engine.begin() as conn:
                claimed += _TASKS.claim(
                    conn, queues=None, n=1, now=due, token="tok", lease_until=due, worker_id="w"
                )
        assert len(claimed) == 2 and {x.status for x in claimed} == {TaskStatus.RUNNING}
        assert "UPDATE" not in seen["own"] and "UPDATE" in seen["app"]
        assert errors[0].replace("t-own", "") == errors[1].replace("t-app", "")
        with own.connect() as conn:
            stored = {
                x.id: x for x in map(_TASKS.from_row, conn.execute(sa.select(tasks)).mappings())
            }
            assert stored["t-own"] == attrs.evolve(stored["t-app"], id="t-own")
            # BEGIN IMMEDIATE refused (another connection writes): SQLAlchemy's error,
            # and the connection begins again once the lock is free.
            other = sqlite3.connect(path, isolation_level=None)
            conn.rollback()
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                conn.begin()
            assert not conn.in_transaction() and not conn.invalidated
            other.execute("ROLLBACK")
            other.close()
            with conn.begin():
                assert conn.execute(sa.text("SELECT count(*) FROM omniq_tasks")).scalar() == 2
    finally:
        own.dispose()
        app.dispose()
