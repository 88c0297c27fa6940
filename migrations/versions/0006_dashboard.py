"""The worker registry (omniq_workers) and the indexes of the dashboard's task list

Each worker process registers a row at start, refreshes ``last_heartbeat``
with its lease heartbeat and deletes the row at a clean stop; a row whose
heartbeat is older than the lease shows a lost worker. The task list pages
by keyset, newest first, over all tasks or one status.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "omniq_workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("last_heartbeat", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_omniq_workers")),
    )
    op.create_index("ix_omniq_tasks_created", "omniq_tasks", ["created_at", "id"])
    op.create_index("ix_omniq_tasks_status_created", "omniq_tasks", ["status", "created_at", "id"])
    op.create_index(
        "ix_omniq_tasks_priority_order", "omniq_tasks", [sa.text("priority DESC"), "run_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_omniq_tasks_priority_order", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_status_created", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_created", table_name="omniq_tasks")
    op.drop_table("omniq_workers")
