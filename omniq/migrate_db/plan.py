"""What ``omniq migrate-db`` copies: a rule for every table of the metadata.

The copy is generic: every table of :data:`omniq.db.schema.metadata` is
copied whole, in dependency order (``sorted_tables``), with every column it
has, unless a rule here says otherwise. A table added later is copied with
no change here; one that must not be copied gets a :class:`Rule` with a
``skip`` reason (a test checks each table has a decision).

Finished tasks (completed, failed, cancelled) are copied too: they keep the
history the dashboard and ``omniq results`` show, the dependency edges of
waiting tasks point at them, and a unique key stays held by the same task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa

from omniq.db.schema import db_migration, events, locks, metadata, results, tasks, workers
from omniq.models import TaskStatus

__all__ = ["Rule", "TablePlan", "plan"]

Row = dict[str, Any]


@attrs.frozen
class Rule:
    """How one table is copied (the default: every row, as it is)."""

    #: Why the table is not copied at all (None: it is copied).
    skip: str | None = None
    #: Which rows are copied, given the copy's cutoff time (None: all).
    where: Callable[[datetime], sa.ColumnElement[bool]] | None = None
    #: A change made to each copied row.
    change: Callable[[Row], Row] | None = None
    #: Source statuses counted as another on the target (verification).
    status_as: Mapping[str, str] = attrs.field(factory=dict)
    #: Copied only when this option of the migration is on (e.g. ``"events"``).
    option: str | None = None


@attrs.frozen
class TablePlan:
    """The decision for one table: copied (with its rule) or skipped (with the reason)."""

    table: sa.Table
    rule: Rule
    #: The reason it is not copied in this run (a skip, or an option left off).
    skipped: str | None

    @property
    def name(self) -> str:
        return self.table.name

    def where(self, cutoff: datetime) -> sa.ColumnElement[bool] | None:
        return self.rule.where(cutoff) if self.rule.where is not None else None


_LEASE_FREE = {"lease_token": None, "lease_expires_at": None, "worker_id": None, "started_at": None}


def _reset_running(row: Row) -> Row:
    """A task still running on the source starts over on the target, pending (no lease)."""
    if row["status"] == TaskStatus.RUNNING.value:
        row.update(status=TaskStatus.PENDING.value, **_LEASE_FREE)
    return row


def _unexpired(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(results.c.expires_at.is_(None), results.c.expires_at > cutoff)


#: The tables with a rule of their own (every other table is copied whole).
RULES: dict[str, Rule] = {
    tasks.name: Rule(
        change=_reset_running,
        status_as={TaskStatus.RUNNING.value: TaskStatus.PENDING.value},
    ),
    results.name: Rule(where=_unexpired),
    events.name: Rule(option="events"),
    locks.name: Rule(
        skip="named leases held by the source's processes; the target's take their own"
    ),
    workers.name: Rule(
        skip="the registry of processes running on the source; workers register on the target"
    ),
    db_migration.name: Rule(skip="the migration's own marker: each database keeps its own"),
}


def plan(options: frozenset[str] = frozenset()) -> list[TablePlan]:
    """The decision for every table of the metadata, in dependency order."""
    out = []
    for table in metadata.sorted_tables:
        rule = RULES.get(table.name, Rule())
        skipped = rule.skip
        if skipped is None and rule.option is not None and rule.option not in options:
            skipped = f"copied only with --{rule.option}"
        out.append(TablePlan(table, rule, skipped))
    return out
