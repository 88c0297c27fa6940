"""The hot paths' shortcuts give exactly what the general code gives, and fall back on anything odd.

- Tasks read back are built without running every validator when their
  values are plainly what OmniQ writes; otherwise ``Task(**values)`` runs
  and its error names the field.
- Column bind/result processors take shortcuts for common values; every
  other value still goes through the column type.
- Sync functions run in the thread pool hand their outcomes to the loop in
  batches; cancellation before start and timeouts behave as before.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from omniq.db.engine import Dialect
from omniq.db.onehop import RowCodec
from omniq.db.schema import events, results, tasks
from omniq.errors import ValidationError
from omniq.models import ResultStatus, Task, TaskResult, TaskStatus
from omniq.models.task import task_from_row_values
from omniq.repositories.results import ResultRepository
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
    fast = task_from_row_values(_values(task))
    assert fast == task
    assert fast == Task(**_values(task))
    assert type(fast.tags) is tuple and type(fast.depends_on) is tuple
    assert fast.status is task.status
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.priority = 1


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
    with pytest.raises(ValidationError, match=named):
        task_from_row_values(values)


def test_duplicate_dependencies_read_back_are_deduplicated_as_on_write() -> None:
    values = _values(Task(func="pkg.mod:f"))
    values["depends_on"] = ["a", "a", "b"]
    assert task_from_row_values(values).depends_on == ("a", "b")


def test_an_aware_non_utc_instant_read_back_is_kept_as_the_same_instant() -> None:
    values = _values(Task(func="pkg.mod:f"))
    values["created_at"] = NOW.astimezone(timezone(timedelta(hours=5)))
    assert task_from_row_values(values).created_at == NOW


# --- column processors -------------------------------------------------------------------


def _codecs() -> list[tuple[RowCodec, sa.Table]]:
    dialect = sqlite.dialect()
    return [(RowCodec(table, dialect), table) for table in (tasks, events, results)]


BIND_CASES: dict[str, list[Any]] = {
    "created_at": [NOW, NOW.astimezone(timezone(timedelta(hours=-3))), 1_700_000_000_000_000],
    "ttl": [timedelta(0), timedelta(days=2, microseconds=7), 1.5, 3],
    "tags": [(), [], ["a"], ("a", "b")],
    "store_result": [True, False],
    # Event data: one identifier key and an int take the shortcut; the rest do not.
    "data": [
        {"attempt": 2},
        {"attempt": -7},
        {"attempt": 10**30},
        {"attempt": True},
        {"attempt": 1.5},
        {"attempt": "2"},
        {"attempt": None},
        {"naïve": 1},
        {"a b": 1},
        {'q"uote': 1},
        {"": 1},
        {1: 2},
        {"attempt": 1, "other": 2},
        {},
    ],
}


@pytest.mark.parametrize("column", sorted(BIND_CASES))
def test_bind_shortcuts_give_what_the_column_type_gives(column: str) -> None:
    dialect = sqlite.dialect()
    table = events if column == "data" else tasks
    codec = RowCodec(table, dialect)
    slow = table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    fast = codec.bind[column]
    assert slow is not None and fast is not None
    for value in BIND_CASES[column]:
        assert fast(value) == slow(value), value


def test_a_naive_datetime_is_still_refused_naming_the_column_type() -> None:
    fast = RowCodec(tasks, sqlite.dialect()).bind["created_at"]
    assert fast is not None
    with pytest.raises(ValidationError, match="naive"):
        fast(datetime(2026, 1, 1))


RESULT_CASES: dict[str, list[Any]] = {
    "created_at": [0, 1_700_000_000_123_456, -5, "1700000000000000"],
    "ttl": [0.0, 1.25, 86400.0, 1e300, -1e300, 5],
    "tags": ["[]", '["a"]', '{"k": [1]}'],
    "store_result": [0, 1],
}


@pytest.mark.parametrize("column", sorted(RESULT_CASES))
def test_result_shortcuts_give_what_the_column_type_gives(column: str) -> None:
    dialect = sqlite.dialect()
    codec = RowCodec(tasks, dialect)
    slow = tasks.c[column].type.dialect_impl(dialect).result_processor(dialect, None)
    fast = codec.result[column]
    assert slow is not None and fast is not None
    for value in RESULT_CASES[column]:
        expected, got = slow(value), fast(value)
        assert type(got) is type(expected) and repr(got) == repr(expected), value


def _raw_value(column: sa.Column[Any], variant: int) -> Any:
    """A driver value of ``column``'s type (variant 0 or 1), as SQLite returns it."""
    kind = type(column.type).__name__
    if kind == "UTCDateTime":
        return (1_700_000_000_123_456, -5)[variant]
    if kind == "Duration":
        return (1.5, 5)[variant]
    if kind == "JSON":
        return ("[]", '{"k": ["a"]}')[variant]
    if kind == "Boolean":
        return (1, 0)[variant]
    if kind in ("BigInteger", "Integer"):
        return (3, -3)[variant]
    return f"{column.key}-{variant}"


LOADER_ROWS: list[tuple[Any, ...]] = [
    (None,) * len(tasks.c),
    tuple(_raw_value(c, 0) for c in tasks.c),
    tuple(None if i % 2 else _raw_value(c, 1) for i, c in enumerate(tasks.c)),
]


@pytest.mark.parametrize("raw", LOADER_ROWS)
def test_the_generated_loader_applies_each_columns_processor_to_non_null_values(
    raw: tuple[Any, ...],
) -> None:
    codec = RowCodec(tasks, sqlite.dialect())
    names = [c.key for c in tasks.c]
    expected = {
        name: value if value is None or codec.result[name] is None else codec.result[name](value)
        for name, value in zip(names, raw, strict=True)
    }
    got = codec.loader(names)(raw)
    assert list(got) == names
    assert {k: repr(v) for k, v in got.items()} == {k: repr(v) for k, v in expected.items()}


def test_the_generated_loader_refuses_a_row_of_the_wrong_length() -> None:
    load = RowCodec(tasks, sqlite.dialect()).loader(["id", "created_at"])
    assert load(("x", 0)) == {"id": "x", "created_at": datetime(1970, 1, 1, tzinfo=UTC)}
    with pytest.raises(ValueError):
        load(("x",))
    with pytest.raises(ValueError):
        load(("x", 0, 1))
    assert RowCodec(tasks, sqlite.dialect()).loader(["id"])(("only",)) == {"id": "only"}


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
    task = task_from_row_values(values)
    assert task.lease_token is None and task.worker_id is None
    assert task == attrs.evolve(SAMPLES[1], lease_token=None, worker_id=None)


# --- multi-row inserts --------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 127, 128, 129, 300])
def test_insert_many_writes_every_row_once_in_order(count: int) -> None:
    import sqlite3

    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from omniq.db.onehop import Compiled

    table = sa.Table(
        "t", sa.MetaData(), sa.Column("k", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
    )
    dialect = sqlite.dialect()
    plain = Compiled(table.insert().values(k=sa.bindparam("k"), v=sa.bindparam("v")), dialect, {})
    upsert_stmt = sqlite_insert(table).values(k=sa.bindparam("k"), v=sa.bindparam("v"))
    upsert = Compiled(
        upsert_stmt.on_conflict_do_update(index_elements=["k"], set_={"v": upsert_stmt.excluded.v}),
        dialect,
        {},
    )
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    plain.insert_many(conn, [plain.params({"k": i, "v": f"a{i}"}) for i in range(count)])
    assert conn.execute("SELECT k, v FROM t ORDER BY rowid").fetchall() == [
        (i, f"a{i}") for i in range(count)
    ]
    # The upsert form keeps its ON CONFLICT clause for every row.
    upsert.insert_many(conn, [upsert.params({"k": i, "v": f"b{i}"}) for i in range(count + 2)])
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [
        (i, f"b{i}") for i in range(count + 2)
    ]
    # A failing row fails its statement as executemany would (nothing half-written
    # once the caller rolls back).
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.IntegrityError):
        plain.insert_many(
            conn, [plain.params({"k": count + 10, "v": "x"}), plain.params({"k": 0, "v": "dup"})]
        )
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (count + 2,)
