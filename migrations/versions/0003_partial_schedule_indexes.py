"""partial schedule indexes: only events and results of scheduled tasks are indexed

Most events and results belong to tasks that no schedule made; indexing their
NULL ``schedule_id`` cost a B-tree insert per row for nothing. Lookups by
schedule (``schedule_id = ?``) use the partial indexes on both engines.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_omniq_events_schedule", "omniq_events", ["schedule_id", "id"]),
    ("ix_omniq_results_schedule", "omniq_results", ["schedule_id", "created_at"]),
)
_SCHEDULED = sa.text("schedule_id IS NOT NULL")


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, sqlite_where=_SCHEDULED, postgresql_where=_SCHEDULED)


def downgrade() -> None:
    for name, table, columns in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns)
