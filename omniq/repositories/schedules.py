"""Schedules repository: Core statements on ``omniq_schedules``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from types import EllipsisType
from typing import Any

import cattrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import schedules as s
from omniq.errors import InvalidRow, OmniQError, SerializationError
from omniq.models import Schedule, ScheduleStatus
from omniq.models._fields import check_utf8_within
from omniq.repositories._base import PayloadCodec, root_message, translate_errors
from omniq.repositories.db_migration import claims_open
from omniq.serialization import converter


class ScheduleRepository:
    """CRUD, due-schedule queries and compare-and-set updates of schedules."""

    def __init__(self, dialect: Dialect, codec: PayloadCodec | None = None) -> None:
        self.dialect = dialect
        self.codec = codec or PayloadCodec()
        self._get = sa.select(s).where(s.c.id == sa.bindparam("id"))
        self._get_locked = self._get.with_for_update()

    def to_row(self, schedule: Schedule) -> dict[str, Any]:
        """The column values of ``schedule`` (payload serialized)."""
        try:
            row: dict[str, Any] = converter.unstructure(schedule)
        except RecursionError:
            raise SerializationError("func_args/func_kwargs: nested too deeply") from None
        for name in ("func_args", "func_kwargs", "payload_error"):
            row.pop(name)
        # Text no database can store (a lone surrogate), in any column, JSON ones too.
        for name, value in row.items():
            check_utf8_within(value, name)
        row["payload"] = self.codec.encode_call(
            schedule.serializer, schedule.func_args, schedule.func_kwargs, subject=schedule.func
        )
        return row

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Schedule:
        """The Schedule of a row; an undecodable payload is reported in ``payload_error``."""
        data = dict(row)
        payload = data.pop("payload")
        try:
            args, kwargs, _ = self.codec.decode_call(
                data["serializer"], payload, subject=str(data.get("func"))
            )
            data.update(func_args=args, func_kwargs=kwargs)
        except OmniQError as exc:
            data["payload_error"] = f"{type(exc).__name__}: {exc}"
        try:
            return converter.structure(data, Schedule)
        except (cattrs.BaseValidationError, OmniQError, ValueError, TypeError) as exc:
            raise InvalidRow(
                f"schedule {data.get('id')!r} cannot be read: {root_message(exc)}"
            ) from exc

    def insert(self, conn: Connection, schedule: Schedule) -> None:
        """Insert one schedule."""
        with translate_errors("create schedule"):
            conn.execute(s.insert(), self.to_row(schedule))

    def get_by_name(self, conn: Connection, name: str, *, lock: bool = False) -> Schedule | None:
        """The schedule named ``name`` (names are unique), or None.

        ``lock``: read to be written back in this transaction. Where rows lock
        (PostgreSQL) it is locked FOR UPDATE until the transaction ends, so no
        fire commits in between (a fire skips a locked row); SQLite's write
        transactions are serialized already.
        """
        stmt = sa.select(s).where(s.c.name == name)
        if lock and self.dialect.skip_locked:
            stmt = stmt.with_for_update()
        with translate_errors("get schedule"):
            row = (conn.execute(stmt)).mappings().first()
        return None if row is None else self.from_row(row)

    def get(self, conn: Connection, schedule_id: str, *, lock: bool = False) -> Schedule | None:
        """The schedule with ``schedule_id``, or None (``lock`` as in :meth:`get_by_name`)."""
        stmt = self._get_locked if lock and self.dialect.skip_locked else self._get
        with translate_errors("get schedule"):
            row = (conn.execute(stmt, {"id": schedule_id})).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def query(
        self,
        conn: Connection,
        *,
        status: Collection[ScheduleStatus] | None = None,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "created_at",
        unreadable: list[tuple[str, str]] | None = None,
    ) -> list[Schedule]:
        """Schedules (optionally of some statuses), by created_at or next_run_at.

        Unreadable rows as in :meth:`due`.
        """
        column = {"created_at": s.c.created_at, "next_run_at": s.c.next_run_at}[order_by]
        stmt = sa.select(s).order_by(column, s.c.id).limit(limit).offset(offset)
        if order_by == "next_run_at":
            stmt = stmt.where(s.c.next_run_at.is_not(None))
        if status is not None:
            stmt = stmt.where(s.c.status.in_([x.value for x in status]))
        with translate_errors("list schedules"):
            rows = (conn.execute(stmt)).mappings().all()
        return self._readable(rows, unreadable)

    def due(
        self,
        conn: Connection,
        now: datetime,
        limit: int,
        unreadable: list[tuple[str, str]] | None = None,
    ) -> list[Schedule]:
        """Active schedules whose next_run_at has come, earliest first.

        Rows that cannot be read are appended to ``unreadable`` as ``(id,
        reason)`` (without that list, :class:`InvalidRow` is raised), so one bad
        row does not stop the others from firing.
        """
        stmt = (
            sa.select(s)
            .where(s.c.status == ScheduleStatus.ACTIVE.value, s.c.next_run_at <= now)
            .where(claims_open())  # a database migrated away fires nothing
            .order_by(s.c.next_run_at, s.c.id)
            .limit(limit)
        )
        if self.dialect.skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        with translate_errors("find due schedules"):
            rows = (conn.execute(stmt)).mappings().all()
        return self._readable(rows, unreadable)

    def _readable(
        self, rows: Sequence[sa.RowMapping], unreadable: list[tuple[str, str]] | None
    ) -> list[Schedule]:
        """The Schedules of ``rows``; unreadable ones go to ``unreadable`` (else raise)."""
        if unreadable is None:
            return [self.from_row(row) for row in rows]
        schedules = []
        for row in rows:
            try:
                schedules.append(self.from_row(row))
            except InvalidRow as exc:
                unreadable.append((str(row["id"]), str(exc)))
        return schedules

    def next_run_at(self, conn: Connection) -> datetime | None:
        """The earliest next_run_at of an active schedule (read without decoding any row)."""
        stmt = sa.select(sa.func.min(s.c.next_run_at)).where(
            s.c.status == ScheduleStatus.ACTIVE.value
        )
        with translate_errors("list schedules"):
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
        return value

    def overdue(
        self, conn: Connection, now: datetime, limit: int
    ) -> list[tuple[str, str | None, datetime]]:
        """``(id, name, next_run_at)`` of active schedules due before ``now``, earliest first
        (a plain read: no locks, nothing decoded)."""
        stmt = (
            sa.select(s.c.id, s.c.name, s.c.next_run_at)
            .where(s.c.status == ScheduleStatus.ACTIVE.value, s.c.next_run_at < now)
            .order_by(s.c.next_run_at, s.c.id)
            .limit(limit)
        )
        with translate_errors("find overdue schedules"):
            return [(row[0], row[1], row[2]) for row in conn.execute(stmt).all()]

    def quarantine(self, conn: Connection, schedule_id: str, now: datetime) -> bool:
        """Pause a schedule whose row cannot be read (it no longer fires); True if changed."""
        with translate_errors("quarantine schedule"):
            result = conn.execute(
                sa.update(s)
                .where(s.c.id == schedule_id, s.c.status == ScheduleStatus.ACTIVE.value)
                .values(
                    status=ScheduleStatus.PAUSED.value,
                    next_run_at=None,
                    updated_at=now,
                    paused_at=now,
                )
            )
        return result.rowcount > 0

    def update(
        self,
        conn: Connection,
        schedule_id: str,
        values: Mapping[str, Any],
        *,
        expected_status: Collection[ScheduleStatus] | None = None,
        expected_next_run_at: datetime | EllipsisType | None = ...,
    ) -> Schedule | None:
        """Update one schedule if it still matches the expectations (compare-and-set).

        ``expected_next_run_at`` left out (``...``) is not checked; None expects
        no next run. Returns the updated schedule, or None when no row matched.
        """
        stmt = sa.update(s).where(s.c.id == schedule_id)
        if expected_status is not None:
            stmt = stmt.where(s.c.status.in_([x.value for x in expected_status]))
        if expected_next_run_at is not ...:
            stmt = stmt.where(
                s.c.next_run_at.is_(None)
                if expected_next_run_at is None
                else s.c.next_run_at == expected_next_run_at
            )
        clean = {k: (v.value if isinstance(v, ScheduleStatus) else v) for k, v in values.items()}
        stmt = stmt.values(**clean).returning(*s.c)
        with translate_errors("update schedule"):
            row = (conn.execute(stmt)).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def delete(self, conn: Connection, schedule_id: str) -> bool:
        """Delete one schedule; True if it existed."""
        with translate_errors("delete schedule"):
            result = conn.execute(sa.delete(s).where(s.c.id == schedule_id))
        return result.rowcount > 0
