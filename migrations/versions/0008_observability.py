"""observability: the producer's trace context on each task; task progress

Issue 15: ``omniq_tasks.trace_context`` keeps the W3C trace context of the
span that enqueued the task (its first attempt's span is that span's child);
``omniq_task_progress`` keeps the last progress a running task reported (one
row per task, written at most a few times per second, kept when the task is
killed). Self-contained: one added column and a new table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never a table rebuild (see revision 0005).
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.add_column(sa.Column("trace_context", sa.Text(), nullable=True))
    op.create_table(
        "omniq_task_progress",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("done", sa.Float(), nullable=False),
        sa.Column("total", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["omniq_tasks.id"],
            name=op.f("fk_omniq_task_progress_task_id_omniq_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_omniq_task_progress")),
    )


def downgrade() -> None:
    op.drop_table("omniq_task_progress")
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.drop_column("trace_context")
