"""initial schema: tasks, dependencies, schedules, results, events

Revision ID: 0001
Revises:
Create Date: 2026-11-28

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "omniq_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("queue_name", sa.String(length=200), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("schedule_id", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("execution_time", sa.Float(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_omniq_events")),
    )
    op.create_index("ix_omniq_events_schedule", "omniq_events", ["schedule_id", "id"], unique=False)
    op.create_index("ix_omniq_events_task", "omniq_events", ["task_id", "id"], unique=False)
    op.create_index("ix_omniq_events_timestamp", "omniq_events", ["timestamp"], unique=False)
    op.create_index("ix_omniq_events_type", "omniq_events", ["event_type", "id"], unique=False)

    op.create_table(
        "omniq_results",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("schedule_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("serializer", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("ttl", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("execution_time", sa.Float(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_omniq_results")),
    )
    op.create_index("ix_omniq_results_expires_at", "omniq_results", ["expires_at"], unique=False)
    op.create_index(
        "ix_omniq_results_schedule", "omniq_results", ["schedule_id", "created_at"], unique=False
    )

    op.create_table(
        "omniq_schedules",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("func", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("serializer", sa.String(length=32), nullable=False),
        sa.Column("queue_name", sa.String(length=200), nullable=False),
        sa.Column("task_options", sa.JSON(), nullable=False),
        sa.Column("schedule_type", sa.String(length=16), nullable=False),
        sa.Column("cron_expression", sa.Text(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("interval", sa.Float(), nullable=True),
        sa.Column("run_at", sa.BigInteger(), nullable=True),
        sa.Column("max_runs", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("misfire_policy", sa.String(length=16), nullable=False),
        sa.Column("misfire_grace", sa.Float(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=True),
        sa.Column("last_run_at", sa.BigInteger(), nullable=True),
        sa.Column("next_run_at", sa.BigInteger(), nullable=True),
        sa.Column("run_count", sa.Integer(), nullable=False),
        sa.Column("paused_at", sa.BigInteger(), nullable=True),
        sa.Column("resumed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_omniq_schedules")),
    )
    op.create_index(
        "ix_omniq_schedules_due", "omniq_schedules", ["status", "next_run_at"], unique=False
    )

    op.create_table(
        "omniq_tasks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("queue_name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("func", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("serializer", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("run_at", sa.BigInteger(), nullable=False),
        sa.Column("ttl", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
        sa.Column("callback", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_delay", sa.Float(), nullable=False),
        sa.Column("result_ttl", sa.Float(), nullable=True),
        sa.Column("store_result", sa.Boolean(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("unique_key", sa.Text(), nullable=True),
        sa.Column("schedule_id", sa.String(length=64), nullable=True),
        sa.Column("scheduled_for", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["omniq_schedules.id"],
            name=op.f("fk_omniq_tasks_schedule_id_omniq_schedules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_omniq_tasks")),
    )
    op.create_index(
        "ix_omniq_tasks_completed_at",
        "omniq_tasks",
        ["completed_at"],
        unique=False,
        sqlite_where=sa.text("completed_at IS NOT NULL"),
        postgresql_where=sa.text("completed_at IS NOT NULL"),
    )
    op.create_index(
        "ix_omniq_tasks_expires_at",
        "omniq_tasks",
        ["expires_at"],
        unique=False,
        sqlite_where=sa.text("expires_at IS NOT NULL"),
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_omniq_tasks_lease_expires_at",
        "omniq_tasks",
        ["lease_expires_at"],
        unique=False,
        sqlite_where=sa.text("lease_expires_at IS NOT NULL"),
        postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
    )
    op.create_index(
        "uq_omniq_tasks_live_unique_key",
        "omniq_tasks",
        ["unique_key"],
        unique=True,
        sqlite_where=sa.text(
            "unique_key IS NOT NULL AND status IN ('pending', 'waiting', 'running')"
        ),
        postgresql_where=sa.text(
            "unique_key IS NOT NULL AND status IN ('pending', 'waiting', 'running')"
        ),
    )
    op.create_index(
        "ix_omniq_tasks_claim",
        "omniq_tasks",
        ["queue_name", "status", sa.text("priority DESC"), "run_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_omniq_tasks_status_order",
        "omniq_tasks",
        ["status", sa.text("priority DESC"), "run_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_omniq_tasks_schedule_fire",
        "omniq_tasks",
        ["schedule_id", "scheduled_for"],
        unique=True,
        sqlite_where=sa.text("scheduled_for IS NOT NULL"),
        postgresql_where=sa.text("scheduled_for IS NOT NULL"),
    )

    op.create_table(
        "omniq_task_dependencies",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("depends_on_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["omniq_tasks.id"],
            name=op.f("fk_omniq_task_dependencies_depends_on_id_omniq_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["omniq_tasks.id"],
            name=op.f("fk_omniq_task_dependencies_task_id_omniq_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "task_id", "depends_on_id", name=op.f("pk_omniq_task_dependencies")
        ),
    )
    op.create_index(
        "ix_omniq_task_dependencies_depends_on_id",
        "omniq_task_dependencies",
        ["depends_on_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_omniq_task_dependencies_depends_on_id", table_name="omniq_task_dependencies")

    op.drop_table("omniq_task_dependencies")
    op.drop_index("uq_omniq_tasks_schedule_fire", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_status_order", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_claim", table_name="omniq_tasks")
    op.drop_index("uq_omniq_tasks_live_unique_key", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_lease_expires_at", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_expires_at", table_name="omniq_tasks")
    op.drop_index("ix_omniq_tasks_completed_at", table_name="omniq_tasks")

    op.drop_table("omniq_tasks")
    op.drop_index("ix_omniq_schedules_due", table_name="omniq_schedules")

    op.drop_table("omniq_schedules")
    op.drop_index("ix_omniq_results_schedule", table_name="omniq_results")
    op.drop_index("ix_omniq_results_expires_at", table_name="omniq_results")

    op.drop_table("omniq_results")
    op.drop_index("ix_omniq_events_type", table_name="omniq_events")
    op.drop_index("ix_omniq_events_timestamp", table_name="omniq_events")
    op.drop_index("ix_omniq_events_task", table_name="omniq_events")
    op.drop_index("ix_omniq_events_schedule", table_name="omniq_events")

    op.drop_table("omniq_events")
