"""``omniq migrate-db``: move a queue from one database to another (SQLite -> PostgreSQL).

1. The target is upgraded to head; both schemas must match this OmniQ's
   metadata (the source must already be at head: it is never upgraded here).
2. The source is flagged (``omniq_db_migration``, role ``source``): its
   workers claim nothing and fire no schedule, its enqueues raise
   :class:`~omniq.errors.DatabaseMigrated`. Running tasks are waited for
   (lost leases are recovered as a worker would), or given back to pending
   with ``force``.
3. Every table is copied in dependency order, in batches, keeping ids and
   times (see :mod:`omniq.migrate_db.plan` for what is copied and why).
4. Rows per table and status are compared; the source stays flagged.

Running it again after an interruption resumes (the target's marker holds
the migration id the source's flag holds); rows already copied are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq._portal import run_sync
from omniq._time import new_id, to_timedelta
from omniq.db import migrate
from omniq.db.engine import normalize_url, sqlite_path
from omniq.errors import DatabaseError, MigrationRefused, ValidationError
from omniq.migrate_db.copy import (
    advance_sequences,
    copy_table,
    count_rows,
    serial_tops,
    status_counts,
)
from omniq.migrate_db.plan import TablePlan, plan
from omniq.migrate_db.report import MigrationReport, Progress, TableReport
from omniq.models import Settings, TaskStatus
from omniq.repositories.db_migration import (
    COPYING,
    SOURCE,
    TARGET,
    MigrationMark,
    clear_mark,
    read_mark,
    write_mark,
)
from omniq.services import Services, Storage

__all__ = ["migrate_db", "migrate_db_async", "unflag", "unflag_async"]

#: Rows per batch unless told otherwise, and the most allowed.
DEFAULT_BATCH = 1000
MAX_BATCH = 10_000
_POLL = 0.2
_RUNNING = [TaskStatus.RUNNING]


def _shown(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValidationError("batch_size", f"must be a whole number, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValidationError("batch_size", f"must be 1 to {MAX_BATCH}, got {batch_size}")


def _same_database(a: sa.URL, a_schema: str | None, b: sa.URL, b_schema: str | None) -> bool:
    a_path, b_path = sqlite_path(a), sqlite_path(b)
    if a_path is not None and b_path is not None:
        return a_path.resolve() == b_path.resolve()
    return (_shown(a), a_schema) == (_shown(b), b_schema)


def _missing_sqlite(url: sa.URL) -> bool:
    path = sqlite_path(url)
    return path is not None and not path.is_file()


@attrs.define
class _Run:
    """The state of one migration run."""

    source_url: sa.URL
    target_url: sa.URL
    source: Storage
    target: Storage | None
    tables: list[TablePlan]
    progress: Callable[[Progress], None] | None
    migration_id: str = ""
    cutoff: datetime | None = None
    resumed: bool = False
    already_done: bool = False
    target_revision: str | None = None
    #: The target's tables are at head (after the upgrade; in a dry run, if they were).
    target_ready: bool = False

    async def close(self) -> None:
        await self.source.close()
        if self.target is not None:
            await self.target.close()


@contextmanager
def _opening(side: str, url: sa.URL) -> Iterator[None]:
    """Say which database could not be opened (the command has two)."""
    try:
        yield
    except (OSError, sa.exc.DBAPIError, DatabaseError) as exc:
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        text = (str(cause).strip().splitlines() or [""])[0]
        raise MigrationRefused(
            f"cannot open the {side} database {_shown(url)}: {type(cause).__name__}: {text}"
        ) from exc


async def _check_source(storage: Storage, url: sa.URL) -> None:
    head = migrate.head()
    at = await migrate.current_async(storage.engine)
    if at != head:
        raise MigrationRefused(
            f"the source {_shown(url)} is at revision {at or '<empty>'}, but this OmniQ's "
            f"head is {head}: upgrade it first (`omniq db upgrade --url SOURCE`), stop its "
            "workers' old code, then run migrate-db again"
        )
    diffs = await migrate.diff_async(storage.engine)
    if diffs:
        raise MigrationRefused(
            f"the source {_shown(url)} is at head but its tables differ from this OmniQ's "
            f"schema ({len(diffs)} difference(s); `omniq db check` lists them)"
        )


async def _prepare_target(storage: Storage, url: sa.URL, *, dry_run: bool) -> str | None:
    """Upgrade the target to head (not in a dry run); its revision before."""
    at = await migrate.current_async(storage.engine)
    if dry_run:
        return at
    await migrate.upgrade_async(storage.engine)
    diffs = await migrate.diff_async(storage.engine)
    if diffs:
        raise MigrationRefused(
            f"the target {_shown(url)} was upgraded to head but its tables differ from this "
            f"OmniQ's schema ({len(diffs)} difference(s); `omniq db check` lists them)"
        )
    return at


async def _decide(run: _Run) -> None:
    """Fresh, resumed, or refused: compare the source's flag with the target's marker."""
    src = await run.source.read(lambda c: read_mark(c, SOURCE), what="read the flag")
    tgt = None
    if run.target_ready:
        assert run.target is not None
        tgt = await run.target.read(lambda c: read_mark(c, TARGET), what="read the marker")
    now = run.source.now()
    if tgt is not None:
        if src is None or src.migration_id != tgt.migration_id:
            raise MigrationRefused(
                f"the target {_shown(run.target_url)} already received migration "
                f"{tgt.migration_id} from {tgt.peer}, not from this source: migrate into an "
                "empty database"
            )
        run.migration_id, run.cutoff, run.resumed = tgt.migration_id, tgt.cutoff, True
        # The target is marked done first: done there, the copy finished and verified
        # (its workers may run since; a run killed before the source's mark ends it).
        run.already_done = tgt.state == "done"
        return
    if run.target_ready:
        await _refuse_if_holding_data(run)
    if src is not None and src.state != "done":  # interrupted before the target was marked
        run.migration_id, run.cutoff, run.resumed = src.migration_id, src.cutoff, True
    else:
        run.migration_id, run.cutoff = new_id(), now


async def _refuse_if_holding_data(run: _Run) -> None:
    assert run.target is not None
    for item in run.tables:
        if item.skipped is not None:
            continue
        n = await run.target.read(count_rows(item, None), what=f"count {item.name}")
        if n:
            raise MigrationRefused(
                f"the target {_shown(run.target_url)} already holds OmniQ data ({n} row(s) in "
                f"{item.name}) that did not come from this source: migrate into an empty "
                "database"
            )


async def _flag(run: _Run) -> None:
    """Mark both sides: the source stops claims and enqueues from this commit on."""
    assert run.target is not None and run.cutoff is not None
    started = run.source.now()

    def mark(role: str, peer: sa.URL) -> Callable[[sa.Connection], None]:
        def body(conn: sa.Connection) -> None:
            old = read_mark(conn, role)
            write_mark(
                conn,
                MigrationMark(
                    role=role,
                    migration_id=run.migration_id,
                    peer=_shown(peer),
                    state=COPYING,
                    cutoff=run.cutoff or started,
                    started_at=old.started_at if old is not None else started,
                ),
            )

        return body

    await run.source.write(mark(SOURCE, run.target_url), what="flag the source")
    await run.target.write(mark(TARGET, run.source_url), what="mark the target")


async def _finish_marks(run: _Run) -> None:
    assert run.target is not None
    now = run.source.now()

    def done(role: str) -> Callable[[sa.Connection], None]:
        def body(conn: sa.Connection) -> None:
            old = read_mark(conn, role)
            if old is not None and old.state != "done":
                write_mark(conn, attrs.evolve(old, state="done", finished_at=now))

        return body

    await run.target.write(done(TARGET), what="mark the target")
    await run.source.write(done(SOURCE), what="mark the source")


async def _count_running(storage: Storage) -> int:
    return await storage.read(
        lambda conn: storage.tasks.count(conn, TaskStatus.RUNNING), what="count running tasks"
    )


#: PostgreSQL: the other sessions of this database whose transaction began before ``:t``.
_OLDER_TRANSACTIONS = sa.text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND xact_start < :t ORDER BY pid"
)


async def _drain_older_transactions(storage: Storage, deadline: float) -> None:
    """PostgreSQL: wait until every transaction that began before the flag committed ended.

    A claim statement that started before the flag committed did not see it (its
    snapshot is older) and may still commit claims. Once every such
    transaction ended, whatever it claimed is visible as running, and the wait
    for running tasks covers it. SQLite needs nothing: its single writer
    serializes the flag with every claim.
    """
    if storage.dialect.name != "postgresql":
        return
    flagged_at = await storage.read(
        lambda conn: conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one(),
        what="read the clock",
    )
    loop = asyncio.get_running_loop()
    while True:
        pids = await storage.read(
            lambda conn: list(conn.execute(_OLDER_TRANSACTIONS, {"t": flagged_at}).scalars()),
            what="list older transactions",
        )
        if not pids:
            return
        if loop.time() >= deadline:
            shown = ", ".join(str(pid) for pid in pids[:10])
            raise MigrationRefused(
                f"{len(pids)} session(s) of the source (pid {shown}) hold a transaction that "
                "began before the source was flagged; a claim in one of them could still "
                "commit: end them (an application idle in a transaction?) and run migrate-db "
                "again. The source stays flagged"
            )
        await asyncio.sleep(_POLL)


async def _settle_running(run: _Run, *, force: bool, wait: timedelta) -> int:
    """Wait until no task runs on the flagged source (or release them); return how many released."""
    services = Services(run.source)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    await _drain_older_transactions(run.source, deadline)
    released = 0
    quiet = 0
    while True:
        await services.queue.recover_expired_leases_async()
        if force:
            while running := await services.queue.list_tasks_async(_RUNNING, limit=500):
                done = await services.queue.release_many_async(running, worker_id="migrate-db")
                released += len(done)
                if not done:
                    break
        left = await _count_running(run.source)
        # Twice in a row, as a margin (the drain above already waited for claims that
        # began before the flag committed).
        quiet = quiet + 1 if left == 0 else 0
        if quiet >= 2:
            return released
        if left and loop.time() >= deadline:
            raise MigrationRefused(
                f"{left} task(s) still run on the source after {wait.total_seconds():g}s: "
                "wait for them and run migrate-db again, or pass --force to give them back "
                "to pending (they run again on the target). The source stays flagged: "
                "its workers claim nothing (clear it with `omniq migrate-db --unflag`)"
            )
        await asyncio.sleep(_POLL)


def _reporter(
    progress: Callable[[Progress], None] | None, table: str, total: int
) -> Callable[[int, int], None]:
    """The per-batch callback of one table's copy (reports once at the start)."""
    seen = [0, 0]

    def step(read: int, added: int) -> None:
        seen[0] += read
        seen[1] += added
        if progress is not None:
            progress(Progress(table, seen[0], max(total, seen[0]), seen[1]))

    step(0, 0)
    return step


async def _copy(run: _Run, batch_size: int) -> dict[str, int]:
    assert run.target is not None and run.cutoff is not None
    written: dict[str, int] = {}
    for item in run.tables:
        if item.skipped is not None:
            continue
        total = await run.source.read(count_rows(item, run.cutoff), what=f"count {item.name}")
        step = _reporter(run.progress, item.name, total)
        written[item.name] = await copy_table(
            run.source, run.target, item, cutoff=run.cutoff, batch_size=batch_size, progress=step
        )
    return written


async def _tables(run: _Run, written: dict[str, int]) -> list[TableReport]:
    cutoff = run.cutoff
    out = []
    for item in run.tables:
        if item.skipped is not None:
            out.append(TableReport(item.name, copied=False, reason=item.skipped))
            continue
        source = await run.source.read(status_counts(item, cutoff, as_copied=True))
        target: dict[str, int] = {}
        if run.target is not None and run.target_ready:
            target = await run.target.read(status_counts(item, cutoff, as_copied=False))
        out.append(
            TableReport(
                item.name,
                copied=True,
                source=source,
                target=target,
                written=written.get(item.name, 0),
            )
        )
    return out


async def migrate_db_async(
    source: str | sa.URL,
    target: str | sa.URL,
    *,
    dry_run: bool = False,
    force: bool = False,
    events: bool = False,
    batch_size: int = DEFAULT_BATCH,
    wait: timedelta | float = timedelta(seconds=60),
    progress: Callable[[Progress], None] | None = None,
    source_schema: str | None = None,
    target_schema: str | None = None,
) -> MigrationReport:
    """Move the queue in ``source`` to ``target`` (see the module's docstring); the report.

    ``events``: copy the event log too. ``force``: give tasks still running
    on the source after ``wait`` back to pending instead of refusing.
    ``progress`` is called after each batch. ``dry_run`` changes nothing on
    either side and reports what would be copied.
    """
    _check_batch(batch_size)
    wait = to_timedelta(wait, "wait")
    src_url, dst_url = normalize_url(source), normalize_url(target)
    if _same_database(src_url, source_schema, dst_url, target_schema):
        raise ValidationError("target", "is the source database itself")
    if _missing_sqlite(src_url):
        raise ValidationError("source", f"there is no database at {sqlite_path(src_url)}")
    settings = Settings(auto_migrate=False, db_schema=source_schema)
    src = Storage.from_url(src_url, settings)
    dst = None
    if not (dry_run and _missing_sqlite(dst_url)):
        dst = Storage.from_url(dst_url, Settings(auto_migrate=False, db_schema=target_schema))
    run = _Run(src_url, dst_url, src, dst, plan(frozenset({"events"} if events else ())), progress)
    try:
        return await _migrate(run, dry_run=dry_run, force=force, wait=wait, batch_size=batch_size)
    finally:
        await run.close()


async def _migrate(
    run: _Run, *, dry_run: bool, force: bool, wait: timedelta, batch_size: int
) -> MigrationReport:
    with _opening("source", run.source_url):
        await _check_source(run.source, run.source_url)
        await run.source.open()
    if run.target is not None:
        with _opening("target", run.target_url):
            run.target_revision = await _prepare_target(run.target, run.target_url, dry_run=dry_run)
            run.target_ready = not dry_run or run.target_revision == migrate.head()
            if not dry_run:
                await run.target.open()
    await _decide(run)
    assert run.cutoff is not None
    released = 0
    running = await _count_running(run.source)
    written: dict[str, int] = {}
    sequences: list[str] = []
    if not dry_run and not run.already_done:
        await _flag(run)
        released = await _settle_running(run, force=force, wait=wait)
        assert run.target is not None
        copied = [item.table for item in run.tables if item.skipped is None]
        # Past the source's ids first: what the target writes during the copy (an
        # enqueue's event) takes no id a row still to be copied has.
        tops = await run.source.read(serial_tops(copied), what="read the largest ids")
        await run.target.write(advance_sequences(copied, tops), what="advance sequences")
        written = await _copy(run, batch_size)
        sequences = await run.target.write(advance_sequences(copied), what="advance sequences")
    tables = [] if run.already_done else await _tables(run, written)
    report = MigrationReport(
        migration_id=run.migration_id,
        source=_shown(run.source_url),
        target=_shown(run.target_url),
        head=migrate.head(),
        dry_run=dry_run,
        target_revision=run.target_revision,
        resumed=run.resumed,
        already_done=run.already_done,
        cutoff=run.cutoff,
        released=released,
        running=running,
        sequences=sequences,
        tables=tables,
    )
    if not dry_run and report.ok:
        await _finish_marks(run)  # a mark already done stays as it was
    return report


def migrate_db(source: str | sa.URL, target: str | sa.URL, **options: Any) -> MigrationReport:
    """The blocking twin of :func:`migrate_db_async` (the same options)."""
    return run_sync(migrate_db_async, source, target, **options)


async def unflag_async(url: str | sa.URL, *, schema: str | None = None) -> bool:
    """Clear the marks ``migrate-db`` left on a database: on a source, its workers claim
    and its enqueues work again; on a target whose copy did not finish, its
    workers claim again. True when there was a mark to clear."""
    parsed = normalize_url(url)
    if _missing_sqlite(parsed):
        raise ValidationError("url", f"there is no database at {sqlite_path(parsed)}")
    storage = Storage.from_url(parsed, Settings(auto_migrate=False, db_schema=schema))
    try:
        await storage.open()
        return await storage.write(
            lambda c: any([clear_mark(c, SOURCE), clear_mark(c, TARGET)]), what="unflag"
        )
    finally:
        await storage.close()


def unflag(url: str | sa.URL, *, schema: str | None = None) -> bool:
    """The blocking twin of :func:`unflag_async`."""
    return run_sync(unflag_async, url, schema=schema)
