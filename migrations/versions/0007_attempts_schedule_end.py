"""task attempts history; schedules.end_at and schedules.metadata

The seed-compatible API (issue 12): every failed attempt of a task keeps its
error record in ``omniq_task_attempts`` (written in the transaction of the
failure); a schedule may end at an instant (``end_at``) and carries free-form
JSON ``metadata``. Self-contained: a new table and two added columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "omniq_task_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["omniq_tasks.id"],
            name=op.f("fk_omniq_task_attempts_task_id_omniq_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_omniq_task_attempts")),
    )
    op.create_index(
        "ix_omniq_task_attempts_task", "omniq_task_attempts", ["task_id", "id"], unique=False
    )
    # ALTER TABLE ADD COLUMN, never a table rebuild (see revision 0005).
    with op.batch_alter_table("omniq_schedules", recreate="never") as batch:
        batch.add_column(sa.Column("end_at", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("metadata", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("omniq_schedules", recreate="never") as batch:
        batch.drop_column("metadata")
        batch.drop_column("end_at")
    op.drop_index("ix_omniq_task_attempts_task", table_name="omniq_task_attempts")
    op.drop_table("omniq_task_attempts")
