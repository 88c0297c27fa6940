"""schedule names are unique: a named schedule is declared once and upserted

Issue 13: ``schedule(..., name=...)`` and ``@oq.periodic`` upsert by name, so
restarting an app does not add a second schedule. Names already repeated in
an existing database are kept on one schedule per name (an active or paused
one before others, then the newest) and the other schedules of that name are
renamed ``"<name> (duplicate <id>)"``: nothing is deleted, and the next start
of the app updates the schedule that kept the name. Unnamed schedules (NULL)
are not constrained (a partial unique index).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAMED = sa.text("name IS NOT NULL")
_LIVE = ("active", "paused")


def _dedupe_names() -> None:
    schedules = sa.table(
        "omniq_schedules",
        sa.column("id", sa.String),
        sa.column("name", sa.Text),
        sa.column("status", sa.String),
        sa.column("created_at", sa.BigInteger),
    )
    bind = op.get_bind()
    repeated = (
        sa.select(schedules.c.name)
        .where(schedules.c.name.is_not(None))
        .group_by(schedules.c.name)
        .having(sa.func.count() > 1)
    )
    for (name,) in bind.execute(repeated).all():
        rows = bind.execute(
            sa.select(schedules.c.id, schedules.c.status, schedules.c.created_at).where(
                schedules.c.name == name
            )
        ).all()
        keep = max(rows, key=lambda r: (r.status in _LIVE, r.created_at or 0, r.id))
        for row in rows:
            if row.id != keep.id:
                bind.execute(
                    sa.update(schedules)
                    .where(schedules.c.id == row.id)
                    .values(name=f"{name} (duplicate {row.id})")
                )


def upgrade() -> None:
    _dedupe_names()
    op.create_index(
        "uq_omniq_schedules_name",
        "omniq_schedules",
        ["name"],
        unique=True,
        sqlite_where=_NAMED,
        postgresql_where=_NAMED,
    )


def downgrade() -> None:
    op.drop_index("uq_omniq_schedules_name", table_name="omniq_schedules")
