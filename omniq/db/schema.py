"""The schema's one truth: SQLAlchemy Core tables for tasks, schedules, results, events.

Alembic revisions in ``migrations/versions`` evolve databases to match this
metadata; ``alembic check`` after ``upgrade head`` finds no difference.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniq.db.types import Duration, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: Statuses that hold a unique key (a live task).
_LIVE = "status IN ('pending', 'waiting', 'running')"
_SCHEDULED = sa.text("schedule_id IS NOT NULL")

ID = sa.String(64)


def _serial_id() -> sa.Column[int]:
    """An autoincrement 64-bit primary key (INTEGER on SQLite: its rowid)."""
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


NAME = sa.String(200)

tasks = sa.Table(
    "omniq_tasks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("queue_name", NAME, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("func", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("serializer", sa.String(32), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("description", sa.Text),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("priority", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("run_at", UTCDateTime, nullable=False),
    sa.Column("ttl", Duration),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("depends_on", sa.JSON, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("callback", sa.Text),
    sa.Column("retry_count", sa.Integer, nullable=False),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("retry_delay", Duration, nullable=False),
    sa.Column("result_ttl", Duration),
    sa.Column("store_result", sa.Boolean, nullable=False),
    sa.Column("timeout", Duration),
    sa.Column("unique_key", sa.Text),
    sa.Column("schedule_id", ID, sa.ForeignKey("omniq_schedules.id", ondelete="SET NULL")),
    sa.Column("scheduled_for", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lost_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("worker_id", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    # W3C trace context (traceparent/tracestate as JSON) of the span that enqueued it.
    sa.Column("trace_context", sa.Text),
    # Flow control (revision 0010): the task's concurrency and rate keys and
    # their limits as declared (see omniq_limits); NULL for most tasks.
    sa.Column("concurrency_key", NAME),
    sa.Column("concurrency_max", sa.Integer),
    sa.Column("rate_key", NAME),
    sa.Column("rate_limit", sa.Integer),
    sa.Column("rate_period", Duration),
    # The workflow (chain, group, chord) the task belongs to (revision 0011); NULL for most.
    sa.Column("workflow_id", ID),
    # Partial indexes: only rows that can match the sweeps are indexed.
    *(
        sa.Index(
            f"ix_omniq_tasks_{column}",
            column,
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
        for column in ("expires_at", "lease_expires_at", "completed_at")
    ),
    # Flow control: the claim finds the keys with pending tasks, and counts
    # running tasks per concurrency key, through these (only keyed tasks).
    *(
        sa.Index(
            f"ix_omniq_tasks_{column}",
            column,
            "status",
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
        for column in ("concurrency_key", "rate_key")
    ),
    sa.Index(
        "uq_omniq_tasks_live_unique_key",
        "unique_key",
        unique=True,
        sqlite_where=sa.text(f"unique_key IS NOT NULL AND {_LIVE}"),
        postgresql_where=sa.text(f"unique_key IS NOT NULL AND {_LIVE}"),
    ),
    # Exactly one task per (schedule, fire time).
    sa.Index(
        "uq_omniq_tasks_schedule_fire",
        "schedule_id",
        "scheduled_for",
        unique=True,
        sqlite_where=sa.text("scheduled_for IS NOT NULL"),
        postgresql_where=sa.text("scheduled_for IS NOT NULL"),
    ),
)

# The claim: WHERE queue_name=? AND status='pending' ORDER BY priority DESC, run_at, id
# walks this index in order (no sort); the second serves the claim across all
# queues and listings by status.
sa.Index(
    "ix_omniq_tasks_claim",
    tasks.c.queue_name,
    tasks.c.status,
    tasks.c.priority.desc(),
    tasks.c.run_at,
    tasks.c.id,
)
sa.Index(
    "ix_omniq_tasks_status_order",
    tasks.c.status,
    tasks.c.priority.desc(),
    tasks.c.run_at,
    tasks.c.id,
)

# The dashboard's task list (revision 0006): keyset pages newest first, over all
# tasks or one status; in claim order over all tasks (one status: the index above).
sa.Index("ix_omniq_tasks_created", tasks.c.created_at, tasks.c.id)
sa.Index("ix_omniq_tasks_status_created", tasks.c.status, tasks.c.created_at, tasks.c.id)
sa.Index("ix_omniq_tasks_priority_order", tasks.c.priority.desc(), tasks.c.run_at, tasks.c.id)

task_dependencies = sa.Table(
    "omniq_task_dependencies",
    metadata,
    sa.Column("task_id", ID, sa.ForeignKey("omniq_tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "depends_on_id",
        ID,
        sa.ForeignKey("omniq_tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Index("ix_omniq_task_dependencies_depends_on_id", "depends_on_id"),
)

schedules = sa.Table(
    "omniq_schedules",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("description", sa.Text),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("func", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("serializer", sa.String(32), nullable=False),
    sa.Column("queue_name", NAME, nullable=False),
    sa.Column("task_options", sa.JSON, nullable=False),
    sa.Column("schedule_type", sa.String(16), nullable=False),
    sa.Column("cron_expression", sa.Text),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("interval", Duration),
    sa.Column("run_at", UTCDateTime),
    sa.Column("max_runs", sa.Integer),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("misfire_policy", sa.String(16), nullable=False),
    sa.Column("misfire_grace", Duration),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime),
    sa.Column("last_run_at", UTCDateTime),
    sa.Column("next_run_at", UTCDateTime),
    sa.Column("run_count", sa.Integer, nullable=False),
    sa.Column("paused_at", UTCDateTime),
    sa.Column("resumed_at", UTCDateTime),
    sa.Column("end_at", UTCDateTime),
    sa.Column("metadata", sa.JSON, nullable=False, server_default=sa.text("'{}'")),
    sa.Index("ix_omniq_schedules_due", "status", "next_run_at"),
    # A named schedule is declared once (upsert by name); unnamed ones are many.
    sa.Index(
        "uq_omniq_schedules_name",
        "name",
        unique=True,
        sqlite_where=sa.text("name IS NOT NULL"),
        postgresql_where=sa.text("name IS NOT NULL"),
    ),
)

results = sa.Table(
    "omniq_results",
    metadata,
    sa.Column("task_id", ID, primary_key=True),
    sa.Column("schedule_id", ID),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("serializer", sa.String(32), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("error_type", sa.Text),
    sa.Column("error_traceback", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("ttl", Duration),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("execution_time", sa.Float),
    sa.Column("worker_id", sa.Text),
    sa.Column("retry_count", sa.Integer, nullable=False),
    sa.Index(
        "ix_omniq_results_schedule",
        "schedule_id",
        "created_at",
        sqlite_where=_SCHEDULED,
        postgresql_where=_SCHEDULED,
    ),
    sa.Index("ix_omniq_results_expires_at", "expires_at"),
)

events = sa.Table(
    "omniq_events",
    metadata,
    _serial_id(),
    # No foreign key: worker and scheduler events have no task, and events
    # outlive the tasks that retention deletes.
    sa.Column("task_id", ID),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("timestamp", UTCDateTime, nullable=False),
    sa.Column("queue_name", NAME),
    sa.Column("worker_id", sa.Text),
    sa.Column("schedule_id", ID),
    sa.Column("message", sa.Text),
    sa.Column("data", sa.JSON),
    sa.Column("execution_time", sa.Float),
    sa.Column("retry_count", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Index("ix_omniq_events_task", "task_id", "id"),
    sa.Index("ix_omniq_events_type", "event_type", "id"),
    # Partial: most events belong to tasks no schedule made (revision 0003).
    sa.Index(
        "ix_omniq_events_schedule",
        "schedule_id",
        "id",
        sqlite_where=_SCHEDULED,
        postgresql_where=_SCHEDULED,
    ),
    sa.Index("ix_omniq_events_timestamp", "timestamp"),
)

attempts = sa.Table(
    "omniq_task_attempts",
    metadata,
    # One row per failed attempt of a task (its final outcome is in omniq_results).
    _serial_id(),
    sa.Column("task_id", ID, sa.ForeignKey("omniq_tasks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("error_type", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime, nullable=False),
    sa.Column("retryable", sa.Boolean, nullable=False),
    sa.Column("worker_id", sa.Text),
    sa.Index("ix_omniq_task_attempts_task", "task_id", "id"),
)

task_progress = sa.Table(
    "omniq_task_progress",
    metadata,
    # The last progress a running task reported (revision 0008): one row per task.
    sa.Column("task_id", ID, sa.ForeignKey("omniq_tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("done", sa.Float, nullable=False),
    sa.Column("total", sa.Float),
    sa.Column("message", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

workflows = sa.Table(
    "omniq_workflows",
    metadata,
    # A chain, group or chord enqueued in one transaction (revision 0011).
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    # The members whose results make the workflow's result, in order, and
    # whether that result is one value ("one") or a list ("list").
    sa.Column("outputs", sa.JSON, nullable=False),
    sa.Column("output_shape", sa.String(8), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

workflow_tasks = sa.Table(
    "omniq_workflow_tasks",
    metadata,
    # One row per member task of a workflow. No foreign key to the task: the
    # member's outcome and result outlive the task row (retention, result TTL).
    sa.Column("task_id", ID, primary_key=True),
    sa.Column(
        "workflow_id",
        ID,
        sa.ForeignKey("omniq_workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("position", sa.Integer, nullable=False),
    # Members whose results this one receives (in order) and how: "none",
    # "one" (the first positional argument) or "list" (one list argument).
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("input_mode", sa.String(8), nullable=False),
    # Members that receive this one's result, and what they do if it ends badly.
    sa.Column("downstream", sa.JSON, nullable=False),
    sa.Column("on_failure", sa.String(16), nullable=False),
    # The counter: inputs not yet settled, decremented in each input's
    # completion (or failure) transaction; at zero the member is released.
    sa.Column("remaining", sa.Integer, nullable=False),
    # The member's final status, result (serialized) and error, once it ended.
    sa.Column("status", sa.String(16)),
    sa.Column("result", sa.Text),
    sa.Column("serializer", sa.String(32), nullable=False),
    sa.Column("error", sa.Text),
    sa.Index("ix_omniq_workflow_tasks_workflow", "workflow_id", "position"),
)

locks = sa.Table(
    "omniq_locks",
    metadata,
    # Named leases (e.g. "maintenance"): one holder at a time per database.
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

limits = sa.Table(
    "omniq_limits",
    metadata,
    # Flow control (revision 0010), one row per key: kind "concurrency" (max_running),
    # "rate" (a token bucket: rate_limit tokens per rate_period, tokens left at
    # refilled_at), or "queue" (a queue's own limits and its pause). Claims lock
    # the rows of the keys they consider; running tasks are counted, not stored.
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", NAME, primary_key=True),
    sa.Column("max_running", sa.Integer),
    sa.Column("rate_limit", sa.Integer),
    sa.Column("rate_period", Duration),
    sa.Column("tokens", sa.Float),
    sa.Column("refilled_at", UTCDateTime),
    sa.Column("paused_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

workers = sa.Table(
    "omniq_workers",
    metadata,
    # The worker registry: a row per running worker process, written at start,
    # refreshed by its heartbeat, deleted at a clean stop (revision 0006).
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", sa.JSON),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("executor", sa.String(16), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat", UTCDateTime, nullable=False),
)

db_migration = sa.Table(
    "omniq_db_migration",
    metadata,
    # ``omniq migrate-db`` (revision 0012): role "source" marks a database whose
    # queue moved elsewhere (workers claim nothing, enqueues are refused);
    # role "target" records which copy a database received (a resume is
    # recognised by the same migration id on both sides).
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("migration_id", sa.String(64), nullable=False),
    sa.Column("peer", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("cutoff", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
)

__all__ = [
    "attempts",
    "db_migration",
    "events",
    "limits",
    "locks",
    "metadata",
    "results",
    "schedules",
    "task_dependencies",
    "tasks",
    "workers",
    "workflow_tasks",
    "workflows",
]
