"""workflows: chain, group and chord over tasks

Issue 16 ("Workflows"): ``omniq_workflows`` holds one row per workflow and
``omniq_workflow_tasks`` one per member task (its inputs, the members that
receive its result, the counter of inputs not yet settled, and its outcome
and serialized result once it ended). ``omniq_tasks.workflow_id`` (NULL for
tasks outside workflows) tells the completion and failure transactions which
tasks need workflow work, without an extra query for the others.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never a table rebuild (see revision 0005).
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.add_column(sa.Column("workflow_id", sa.String(64)))
    op.create_table(
        "omniq_workflows",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("output_shape", sa.String(8), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_omniq_workflows"),
    )
    op.create_table(
        "omniq_workflow_tasks",
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("workflow_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("input_mode", sa.String(8), nullable=False),
        sa.Column("downstream", sa.JSON(), nullable=False),
        sa.Column("on_failure", sa.String(16), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16)),
        sa.Column("result", sa.Text()),
        sa.Column("serializer", sa.String(32), nullable=False),
        sa.Column("error", sa.Text()),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["omniq_workflows.id"],
            name="fk_omniq_workflow_tasks_workflow_id_omniq_workflows",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name="pk_omniq_workflow_tasks"),
    )
    op.create_index(
        "ix_omniq_workflow_tasks_workflow",
        "omniq_workflow_tasks",
        ["workflow_id", "position"],
    )


def downgrade() -> None:
    op.drop_index("ix_omniq_workflow_tasks_workflow", table_name="omniq_workflow_tasks")
    op.drop_table("omniq_workflow_tasks")
    op.drop_table("omniq_workflows")
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.drop_column("workflow_id")
