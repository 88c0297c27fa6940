"""Workers repository: the worker registry rows in ``omniq_workers``."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import tasks as t
from omniq.db.schema import workers as w
from omniq.models import TaskStatus, WorkerInfo
from omniq.repositories._base import translate_errors

__all__ = ["WorkerRepository"]


class WorkerRepository:
    """Register, refresh, remove and list worker processes."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        insert = dialect.insert(w)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[w.c.id],
            set_={c.key: insert.excluded[c.key] for c in w.c if c.key != "id"},
        )
        self._touch = (
            sa.update(w)
            .where(w.c.id == sa.bindparam("worker_id"))
            .values(last_heartbeat=sa.bindparam("at", type_=w.c.last_heartbeat.type))
        )
        self._held = (
            sa.select(t.c.worker_id, sa.func.count())
            .where(t.c.status == TaskStatus.RUNNING.value, t.c.worker_id.is_not(None))
            .group_by(t.c.worker_id)
        )

    def register(self, conn: Connection, info: WorkerInfo) -> None:
        """Insert (or replace) the row of ``info.id``."""
        row = {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "queues": list(info.queues) if info.queues is not None else None,
            "concurrency": info.concurrency,
            "executor": info.executor,
            "version": info.version,
            "started_at": info.started_at,
            "last_heartbeat": info.last_heartbeat,
        }
        with translate_errors("register worker"):
            conn.execute(self._upsert, row)

    def touch(self, conn: Connection, worker_id: str, at: datetime) -> bool:
        """Set the last heartbeat of ``worker_id``; False if it has no row."""
        with translate_errors("refresh worker"):
            return bool(conn.execute(self._touch, {"worker_id": worker_id, "at": at}).rowcount)

    def remove(self, conn: Connection, worker_id: str) -> bool:
        """Delete the row of ``worker_id``; True if there was one."""
        with translate_errors("unregister worker"):
            return bool(conn.execute(sa.delete(w).where(w.c.id == worker_id)).rowcount)

    def remove_silent_since(self, conn: Connection, before: datetime) -> int:
        """Delete rows whose last heartbeat is older than ``before``; how many."""
        with translate_errors("prune workers"):
            return int(conn.execute(sa.delete(w).where(w.c.last_heartbeat < before)).rowcount)

    def list(self, conn: Connection) -> list[WorkerInfo]:
        """Every registered worker, oldest first, with the number of tasks it holds."""
        with translate_errors("list workers"):
            rows = conn.execute(sa.select(w).order_by(w.c.started_at, w.c.id)).mappings().all()
            held = {row[0]: int(row[1]) for row in conn.execute(self._held).all()}
        return [
            WorkerInfo(
                id=row["id"],
                host=row["host"],
                pid=row["pid"],
                queues=tuple(row["queues"]) if row["queues"] is not None else None,
                concurrency=row["concurrency"],
                executor=row["executor"],
                version=row["version"],
                started_at=row["started_at"],
                last_heartbeat=row["last_heartbeat"],
                tasks_held=held.get(row["id"], 0),
            )
            for row in rows
        ]
