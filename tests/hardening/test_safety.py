"""Safety: what a worker refuses to deserialize, verify, import or run, what events leak,
how the SQLite file is protected, and that user strings never become SQL.

Each test runs on every engine it applies to (``db_url`` is parametrized over
SQLite and PostgreSQL). Side effects of task functions go to files in the
test's tmp_path; a refused task must leave none.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from omniq.db.engine import create_engine
from omniq.errors import TaskNotFound, UnsafePayload, ValidationError
from omniq.models import EventType, ResultStatus, Settings, TaskResult, TaskStatus
from omniq.services import Services
from tests.hardening import (
    MODULE,
    ROOT,
    count_tasks,
    drain,
    execute,
    fetch,
    ref,
)
from tests.hardening.tasks import Tripwire, read_lines

pytestmark = pytest.mark.anyio

TRIPWIRE_MODULE = "tests.hardening.import_tripwire"
TRIPWIRE_ENV = "OMNIQ_HARDENING_IMPORT_MARKER"

Opener = Callable[..., Awaitable[Services]]


@pytest.fixture
async def open_services(db_url: str) -> AsyncIterator[Opener]:
    """Open Services on the test database with given Settings; all closed at the end."""
    opened: list[Services] = []

    async def factory(settings: Settings | None = None) -> Services:
        services = await Services.open_async(db_url, settings)
        opened.append(services)
        return services

    try:
        yield factory
    finally:
        for services in opened:
            await services.close_async()


async def failed_result(svc: Services, task_id: str) -> TaskResult:
    """The error result of a task that must have failed (and the task must be failed)."""
    task = await svc.queue.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.FAILED, task
    result = await svc.results.get_async(task_id)
    assert result is not None and result.status is ResultStatus.ERROR, result
    return result


# --- pickle is an opt-in on both sides ----------------------------------------------------------


async def test_pickle_payload_is_never_unpickled_without_opt_in(
    open_services: Opener, tmp_path: Path
) -> None:
    unpickled = tmp_path / "unpickled"
    ran = tmp_path / "ran"
    producer = await open_services(Settings(serializer="pickle", allow_pickle=True))
    plain = await open_services()
    trusting = await open_services(Settings(allow_pickle=True))

    task_id = await producer.queue.enqueue_async(
        ref("touch_arg"), [Tripwire(str(unpickled)), str(ran)]
    )
    assert not unpickled.exists()  # pickling it does not trip it

    stats = await drain(plain)
    assert stats.failed == 1 and stats.completed == 0
    result = await failed_result(plain, task_id)
    assert result.error_type == "UnsafePayload"
    assert "allow_pickle" in (result.error or "")
    assert not unpickled.exists(), "a worker without allow_pickle unpickled the payload"
    assert not ran.exists()
    # Reading the task back does not unpickle it either.
    task = await plain.queue.get_task_async(task_id)
    assert task is not None and task.payload_error is not None
    assert not unpickled.exists()

    # A worker that opted in runs it.
    await plain.queue.requeue_async(task_id)
    stats = await drain(trusting)
    assert stats.completed == 1
    done = await trusting.results.get_async(task_id)
    assert done is not None and done.status is ResultStatus.SUCCESS
    assert done.result == "Tripped"
    assert read_lines(unpickled) == ["unpickled"]
    assert read_lines(ran) == ["Tripped"]


async def test_producer_must_opt_in_to_pickle(open_services: Opener) -> None:
    with pytest.raises(UnsafePayload, match="allow_pickle"):
        await open_services(Settings(serializer="pickle"))
    plain = await open_services()
    with pytest.raises(UnsafePayload):
        await plain.queue.enqueue_async(ref("noop"), [1], serializer="pickle")
    assert await plain.queue.list_tasks_async() == []


# --- HMAC-signed payloads -----------------------------------------------------------------------


async def test_signed_payload_runs_with_the_same_key(open_services: Opener, tmp_path: Path) -> None:
    out = tmp_path / "out"
    producer = await open_services(Settings(signing_key="k1"))
    worker = await open_services(Settings(signing_key="k1"))
    task_id = await producer.queue.enqueue_async(ref("record"), [str(out), "signed"])
    stored = await fetch(
        producer.storage.url.render_as_string(hide_password=False),
        "SELECT payload FROM omniq_tasks WHERE id = :id",
        {"id": task_id},
    )
    assert stored[0][0].startswith("hmac-sha256:")
    assert (await drain(worker)).completed == 1
    assert read_lines(out) == ["signed"]
    assert "k1" not in repr(Settings(signing_key="k1"))


async def test_payload_signed_with_another_key_is_refused(
    open_services: Opener, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    producer = await open_services(Settings(signing_key="k1"))
    worker = await open_services(Settings(signing_key="k2"))
    task_id = await producer.queue.enqueue_async(ref("record"), [str(out), "x"])
    stats = await drain(worker)
    assert stats.failed == 1 and stats.completed == 0
    result = await failed_result(worker, task_id)
    assert result.error_type == "UnsafePayload"
    assert "signature does not match" in (result.error or "")
    assert not out.exists()


async def test_payload_tampered_in_the_database_is_refused(
    db_url: str, open_services: Opener, tmp_path: Path
) -> None:
    good = tmp_path / "good"
    evil = tmp_path / "evil"
    signed = await open_services(Settings(signing_key="k1"))
    task_id = await signed.queue.enqueue_async(ref("record"), [str(good), "x"])
    changed = await execute(
        db_url,
        "UPDATE omniq_tasks SET payload = replace(payload, :old, :new) WHERE id = :id",
        {"old": str(good), "new": str(evil), "id": task_id},
    )
    assert changed == 1
    stats = await drain(signed)
    assert stats.failed == 1 and stats.completed == 0
    result = await failed_result(signed, task_id)
    assert result.error_type == "UnsafePayload"
    assert "signature does not match" in (result.error or "")
    assert not good.exists() and not evil.exists()


async def test_unsigned_payload_is_refused_when_a_key_is_configured(
    open_services: Opener, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    unsigned = await open_services()
    worker = await open_services(Settings(signing_key="k1"))
    task_id = await unsigned.queue.enqueue_async(ref("record"), [str(out), "x"])
    assert (await drain(worker)).failed == 1
    result = await failed_result(worker, task_id)
    assert result.error_type == "UnsafePayload"
    assert "not signed" in (result.error or "")
    assert not out.exists()


async def test_signed_task_redirected_to_another_function_is_refused(
    db_url: str, open_services: Opener, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    signed = await open_services(Settings(signing_key="k1"))
    task_id = await signed.queue.enqueue_async(ref("record"), [str(out), "x"])
    await execute(
        db_url,
        "UPDATE omniq_tasks SET func = :func WHERE id = :id",
        {"func": ref("record_async"), "id": task_id},
    )
    await drain(signed)
    assert not out.exists(), "the redirected function ran"
    result = await failed_result(signed, task_id)
    assert result.error_type == "UnsafePayload"


# --- the worker's allow-list --------------------------------------------------------------------


def test_import_tripwire_works(tmp_path: Path) -> None:
    """The module used below really does leave a marker when imported (in a child process)."""
    marker = tmp_path / "imported"
    env = {**os.environ, TRIPWIRE_ENV: str(marker)}
    subprocess.run(
        [sys.executable, "-c", f"import {TRIPWIRE_MODULE}"], cwd=ROOT, env=env, check=True
    )
    assert read_lines(marker) == ["imported"]


async def test_functions_outside_the_allow_list_are_neither_imported_nor_run(
    open_services: Opener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imported = tmp_path / "imported"
    monkeypatch.setenv(TRIPWIRE_ENV, str(imported))
    assert TRIPWIRE_MODULE not in sys.modules
    svc = await open_services()
    pwned = tmp_path / "pwned"
    calls: dict[str, list[Any]] = {
        "os:system": [f"touch {pwned}-os"],
        "subprocess:run": [["touch", f"{pwned}-subprocess"]],
        f"{TRIPWIRE_MODULE}:run": [],
        # A name that merely starts like the allowed module is another module.
        f"{MODULE}x:run": [],
        # Attribute paths through a module the allowed module imports lead outside it.
        f"{MODULE}:os.system": [f"touch {pwned}-via-os"],
        f"{MODULE}:asyncio.subprocess.create_subprocess_exec": ["touch", f"{pwned}-via-asyncio"],
        f"{MODULE}:append_line.__globals__.get": ["os"],
    }
    ids = {func: await svc.queue.enqueue_async(func, args) for func, args in calls.items()}

    stats = await drain(svc)
    assert stats.failed == len(calls) and stats.completed == 0
    for func, task_id in ids.items():
        result = await failed_result(svc, task_id)
        assert result.error_type == "TaskNotFound", (func, result.error)
    assert TRIPWIRE_MODULE not in sys.modules
    assert not imported.exists()
    assert f"{MODULE}x" not in sys.modules
    assert not [name for name in os.listdir(tmp_path) if name.startswith("pwned")]


async def test_allowed_functions_still_run(open_services: Opener, tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = await open_services()
    await svc.queue.enqueue_async(ref("record"), [str(out), "allowed"])
    assert (await drain(svc)).completed == 1
    assert read_lines(out) == ["allowed"]
    with pytest.raises(TaskNotFound):
        await drain(svc, allow_modules=["os;rm -rf /"])


# --- what events carry --------------------------------------------------------------------------


async def event_text(url: str) -> str:
    """Every column of every event row, as text."""
    return "\n".join(repr(tuple(row)) for row in await fetch(url, "SELECT * FROM omniq_events"))


async def test_events_carry_no_arguments_by_default(
    db_url: str, open_services: Opener, tmp_path: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    svc = await open_services()
    ok = await svc.queue.enqueue_async(
        ref("touch_arg"), [secret, str(tmp_path / "out")], {}, tags=["t"]
    )
    kw = await svc.queue.enqueue_async(ref("noop"), [], {"password": secret})
    bad = await svc.queue.enqueue_async(ref("fail"), ["boom"], max_retries=0)
    many = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ref("noop"), [secret], unique_key=f"u-{secret[-6:]}")]
    )
    stats = await drain(svc)
    assert stats.completed == 3 and stats.failed == 1

    text = await event_text(db_url)
    for task_id in (ok, kw, bad, *many):
        assert task_id in text  # the events exist...
    assert secret not in text  # ...without the arguments
    assert "Traceback" not in text and "most recent call last" not in text

    result = await svc.results.get_async(bad)
    assert result is not None and result.error_traceback is not None
    assert "Traceback (most recent call last)" in result.error_traceback
    assert "raise ValueError(message)" in result.error_traceback
    assert result.error == "ValueError: boom"


async def test_events_carry_arguments_when_asked(
    db_url: str, open_services: Opener, tmp_path: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    svc = await open_services(Settings(log_arguments=True))
    task_id = await svc.queue.enqueue_async(ref("noop"), [secret], {"k": secret})
    (event,) = await svc.events.get_events_async(task_id, EventType.ENQUEUED)
    assert event.data == {"status": "pending", "args": [secret], "kwargs": {"k": secret}}
    assert secret in await event_text(db_url)


# --- the SQLite file ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_new_sqlite_database_is_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "omniq.db"
    svc = await Services.open_async(f"sqlite+aiosqlite:///{path}")
    try:
        await svc.queue.enqueue_async(ref("noop"), [1])
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert side.exists(), side
            assert mode(side) & 0o077 == 0, f"{side} is {oct(mode(side))}"
    finally:
        await svc.close_async()


async def test_world_writable_database_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "omniq.db"
    svc = await Services.open_async(f"sqlite+aiosqlite:///{path}")
    await svc.close_async()
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="omniq.db"):
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await engine.dispose()
    warnings = [r for r in caplog.records if r.name == "omniq.db" and r.levelno == logging.WARNING]
    assert any("world-writable" in r.getMessage() for r in warnings), caplog.text


async def test_private_database_logs_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "omniq.db"
    svc = await Services.open_async(f"sqlite+aiosqlite:///{path}")
    await svc.close_async()
    with caplog.at_level(logging.WARNING, logger="omniq.db"):
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await engine.dispose()
    assert "world-writable" not in caplog.text


# --- user strings never become SQL ---------------------------------------------------------------


async def test_order_by_is_allow_listed(db_url: str, open_services: Opener) -> None:
    svc = await open_services()
    task_id = await svc.queue.enqueue_async(ref("noop"), [1])
    for column in ("id; DROP TABLE omniq_tasks", "payload", "1", "created_at desc", ""):
        with pytest.raises(ValidationError, match="order_by"):
            await svc.queue.list_tasks_async(order_by=column)
    assert [t.id for t in await svc.queue.list_tasks_async(order_by="priority")] == [task_id]
    assert await count_tasks(db_url) == 1


async def test_sql_metacharacters_in_names_are_data(db_url: str, open_services: Opener) -> None:
    svc = await open_services()
    nasty = "x'; DROP TABLE omniq_tasks; --"
    other = await svc.queue.enqueue_async(ref("noop"), [1], queue_name="x")
    task_id = await svc.queue.enqueue_async(
        ref("noop"), ["'); DELETE FROM omniq_events; --"], queue_name=nasty, name=nasty
    )
    listed = await svc.queue.list_tasks_async(queue_name=nasty)
    assert [t.id for t in listed] == [task_id]
    assert listed[0].queue_name == nasty and listed[0].name == nasty
    assert listed[0].func_args == ("'); DELETE FROM omniq_events; --",)
    assert [t.id for t in await svc.queue.list_tasks_async(queue_name="x")] == [other]
    assert await svc.queue.size_async(nasty) == 1
    assert await svc.queue.stats_async() == {"x": {"pending": 1}, nasty: {"pending": 1}}
    events = await svc.events.get_events_async(queue_name=nasty)
    assert [e.task_id for e in events] == [task_id]
    assert await count_tasks(db_url) == 2
    assert len(await fetch(db_url, "SELECT id FROM omniq_events")) == 2
