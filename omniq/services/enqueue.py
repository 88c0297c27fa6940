"""Enqueue: one task, many in one transaction, group commit for concurrent callers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import sqlalchemy as sa

from omniq.errors import DatabaseMigrated, DuplicateTask, ValidationError
from omniq.group_commit import GroupCommit
from omniq.models import EventLevel, EventType, ResultStatus, Task, TaskStatus
from omniq.payload_types import jsonable
from omniq.repositories._base import UNKNOWN_TARGET
from omniq.repositories.db_migration import refuse_if_migrated
from omniq.services import hooks
from omniq.services._shared import _event, _final_result
from omniq.services._storage import Storage
from omniq.services.caller_tx import CallerTx, caller_tx, prepare_caller_tx, ready_for_caller_tx
from omniq.services.dependencies import dependency_order, initial_status
from omniq.services.sweeps import Sweeps

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["Enqueue"]

#: Batches up to this many tasks are "small" writes: on SQLite they may run on
#: the caller's thread when the writer is idle (see ``Storage.write``).
_SMALL = 32


class Enqueue(Sweeps):
    """Writes new tasks and their ``enqueued`` events."""

    def __init__(self, storage: Storage, queues: Sequence[str] | None = None) -> None:
        super().__init__(storage, queues)
        self._group: GroupCommit[tuple[Task, dict[str, Any]], None] = GroupCommit(
            self._write_simple_batch
        )

    async def enqueue_async(
        self,
        func: Task | Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        on_duplicate: Literal["return", "raise"] = "return",
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
        **options: Any,
    ) -> str:
        """Enqueue one task; return its id.

        ``func`` is a Task, or a callable / ``"module:qualname"`` reference with
        ``func_args`` (a list, or a mapping of keyword arguments),
        ``func_kwargs`` and the options of :meth:`build_task`. When a live
        task holds the same ``unique_key``, its id is returned (or
        :class:`DuplicateTask` raised with ``on_duplicate="raise"``).

        With ``connection=`` (or ``session=``), the task is written in that
        open transaction of the application's (see :mod:`omniq.services.caller_tx`).
        """
        _check_on_duplicate(on_duplicate)
        tx = caller_tx(connection, session)
        if isinstance(func, Task):
            task = _new(func)
        else:
            task = self.build_task(func, func_args, func_kwargs, **options)
        if hooks.send is not None:
            wrapped = hooks.send([task], lambda tasks: self._write_one(tasks[0], on_duplicate, tx))
            if wrapped is not None:
                return (await wrapped)[0]
        return (await self._write_one(task, on_duplicate, tx))[0]

    async def _write_one(
        self, task: Task, on_duplicate: Literal["return", "raise"], tx: CallerTx | None = None
    ) -> list[str]:
        if tx is not None:
            return await self._enqueue_in_own_transaction([task], on_duplicate, tx)
        if task.depends_on or task.unique_key is not None or task.status is not TaskStatus.PENDING:
            return await self._enqueue_in_own_transaction([task], on_duplicate)
        # Serialize now, so a bad payload fails before anything is written.
        await self._group.submit((task, self.storage.tasks.to_row(task)))
        return [task.id]

    async def enqueue_many_async(
        self,
        tasks: Iterable[Task],
        *,
        on_duplicate: Literal["return", "raise"] = "return",
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> list[str]:
        """Enqueue tasks in one transaction (multi-row insert): all or none.

        With ``connection=`` (or ``session=``), in that open transaction of the
        application's.
        """
        _check_on_duplicate(on_duplicate)
        tx = caller_tx(connection, session)
        if isinstance(tasks, Task | str | bytes) or not isinstance(tasks, Iterable):
            raise ValidationError(
                "tasks", f"expected an iterable of Task records, got {type(tasks).__name__}"
            )
        batch = list(tasks)
        if not batch:
            return []
        for task in batch:
            if not isinstance(task, Task):
                raise ValidationError("tasks", f"expected Task records, got {type(task).__name__}")
            _new(task)
        ids = [x.id for x in batch]
        if len(set(ids)) != len(ids):
            raise DuplicateTask("enqueue_many: the batch repeats a task id")
        if hooks.send is not None:
            wrapped = hooks.send(
                batch, lambda tasks: self._enqueue_in_own_transaction(tasks, on_duplicate, tx)
            )
            if wrapped is not None:
                return await wrapped
        return await self._enqueue_in_own_transaction(batch, on_duplicate, tx)

    async def enqueue_together_async(
        self,
        tasks: Sequence[Task],
        write: Callable[[sa.Connection], None],
        *,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> list[str]:
        """Enqueue ``tasks`` (no unique keys) and run ``write`` in the same transaction:
        all or nothing (a workflow's tasks and rows, see :mod:`omniq.services.workflows`)."""
        tx = caller_tx(connection, session)
        return await self._enqueue_in_own_transaction(list(tasks), "raise", tx, also=write)

    async def _prepare_caller_tx_async(self) -> None:
        """Get ready to write in callers' transactions (see :func:`prepare_caller_tx`)."""
        await prepare_caller_tx(self.storage)

    def _ready_for_caller_tx(self) -> bool:
        return ready_for_caller_tx(self.storage)

    async def _write_simple_batch(self, items: list[tuple[Task, dict[str, Any]]]) -> list[None]:
        rows = [row for _, row in items]
        events = [
            _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
            for x, _ in items
        ]
        now = self.storage.now()

        def body(conn: sa.Connection) -> None:
            self.storage.tasks.insert_rows(conn, rows)
            self.storage.limits.declare(conn, [x for x, _ in items], now)
            self.storage.events.insert_rows(conn, events)

        async with self._named_migration():
            await self.storage.write(body, what="enqueue", small=len(items) <= _SMALL)
        self.storage.notifier.notify()  # workers wake while the callers resume
        return [None] * len(items)

    async def _enqueue_in_own_transaction(
        self,
        batch: list[Task],
        on_duplicate: Literal["return", "raise"],
        tx: CallerTx | None = None,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> list[str]:
        ordered = dependency_order(batch)
        # Serialize before the transaction: a bad payload fails before anything is written.
        rows = {x.id: self.storage.tasks.to_row(x) for x in batch}

        def body(conn: sa.Connection) -> dict[str, str]:
            ids = self._insert_batch(conn, ordered, rows, on_duplicate)
            if also is not None:
                also(conn)
            return ids

        async with self._named_migration(tx):
            if tx is not None:
                # The caller's transaction: workers are woken once it commits.
                ids = await tx.write(self.storage, body, what="enqueue", wake=True)
            else:
                small = also is None and len(batch) <= _SMALL  # ``also`` may write much more
                ids = await self.storage.write(body, what="enqueue", small=small)
                self.storage.notifier.notify()
        return [ids[x.id] for x in batch]

    @contextlib.asynccontextmanager
    async def _named_migration(self, tx: CallerTx | None = None) -> AsyncIterator[None]:
        """A database flagged by ``omniq migrate-db`` refuses new tasks itself (a trigger,
        revision 0012, so the check costs an enqueue no statement); this names where
        the queue went, read from the flag, in the error.

        In the caller's transaction (``tx``) the flag is read there too: a sync
        connection's work runs with no event loop to read it on OmniQ's own.
        """
        try:
            yield
        except DatabaseMigrated as exc:
            if exc.target != UNKNOWN_TARGET:
                raise
            what = "read the migration flag"
            if tx is not None:
                await tx.write(self.storage, refuse_if_migrated, what=what, wake=False)
            else:
                await self.storage.read(refuse_if_migrated, what=what)
            raise

    def _insert_batch(
        self,
        conn: sa.Connection,
        ordered: list[Task],
        rows: dict[str, dict[str, Any]],
        on_duplicate: Literal["return", "raise"],
    ) -> dict[str, str]:
        """Insert tasks (dependencies first) with edges and events; ``{given id: stored id}``.

        A task whose unique key a live task already holds is not written: its
        id maps to that task's, and tasks of the batch that depend on it
        depend on that task instead.
        """
        repo = self.storage.tasks
        # The limits' rows first, as claims lock them (then tasks): an enqueue that
        # held a dependency's row while waiting for a key's row could deadlock
        # with a claim holding that key and claiming that dependency.
        self.storage.limits.declare(conn, ordered, self.storage.now())
        if not any(x.depends_on or x.unique_key is not None for x in ordered):
            # Most batches: new pending tasks, each written as it is.
            repo.insert_rows(conn, [rows[x.id] for x in ordered])
            self._log_enqueued(conn, ordered)
            return {x.id: x.id for x in ordered}
        in_batch = {x.id for x in ordered}
        outside = {d for x in ordered for d in x.depends_on} - in_batch
        status_of = dict(repo.statuses(conn, outside, lock=True))
        unknown = sorted(outside - status_of.keys())
        if unknown:
            raise ValidationError("depends_on", f"unknown task id(s): {', '.join(unknown)}")
        ids: dict[str, str] = {}
        batch_given = {id(x) for x in ordered}
        plain: list[Task] = []
        written: list[Task] = []
        for given in ordered:
            task = given
            remapped = tuple(ids.get(d, d) for d in task.depends_on)
            if remapped != task.depends_on:
                task = attrs.evolve(task, depends_on=remapped)
            task = initial_status(task, status_of)
            if task.unique_key is not None:
                if repo.insert_unique(conn, task) is None:
                    existing = repo.live_id_for_key(conn, task.unique_key)
                    if on_duplicate == "raise" or existing is None:
                        raise DuplicateTask(
                            f"a live task ({existing}) already holds unique_key "
                            f"{task.unique_key!r}",
                            existing_id=existing,
                        )
                    ids[task.id] = existing
                    status_of.update(repo.statuses(conn, [existing], lock=True))
                    continue
            else:
                plain.append(task)
            ids[task.id] = task.id
            status_of[task.id] = task.status
            written.append(task)
        repo.insert_rows(
            conn, [rows[x.id] if id(x) in batch_given else repo.to_row(x) for x in plain]
        )
        repo.insert_edges(conn, written)
        self._log_enqueued(conn, written)
        return ids

    def _enqueued(self, task: Task) -> dict[str, Any]:
        """The data of an ``enqueued`` event: ids and names, arguments only if asked."""
        if not self.settings.log_arguments or task.serializer != "json":
            return {"status": task.status.value}
        return {
            "status": task.status.value,
            "args": jsonable(list(task.func_args)),
            "kwargs": jsonable(task.func_kwargs),
        }

    def _log_enqueued(self, conn: sa.Connection, tasks: list[Task]) -> None:
        events = []
        results = []
        for x in tasks:
            if x.status is TaskStatus.CANCELLED:
                events.append(
                    _event(EventType.CANCELLED, x, message=x.last_error, level=EventLevel.WARNING)
                )
                if x.store_result:
                    results.append(_final_result(x, ResultStatus.CANCELLED, x.last_error))
            else:
                events.append(
                    _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
                )
        self.storage.events.insert_rows(conn, events)
        self.storage.results.upsert_many(conn, results)


def _new(task: Task) -> Task:
    """``task`` if it can be enqueued as a new task: pending (waiting, with
    dependencies) as :meth:`build_task` makes it, not a record of some other state."""
    if task.status is TaskStatus.PENDING or (task.status is TaskStatus.WAITING and task.depends_on):
        return task
    raise ValidationError(
        "status",
        f"task {task.id}: a new task is pending (or waiting, with dependencies), "
        f"got {task.status.value}",
    )


def _check_on_duplicate(value: object) -> None:
    if value not in ("return", "raise"):
        raise ValidationError("on_duplicate", f"must be 'return' or 'raise', got {value!r}")
