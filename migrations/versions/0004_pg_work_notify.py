"""PostgreSQL: a task that becomes pending wakes listening workers (LISTEN/NOTIFY)

Idle workers on other machines poll; with these triggers a statement that
inserts a pending task that is due, or moves one to pending (retry, requeue,
release, a dependency met), sends ``NOTIFY omniq_work`` when it commits, and
workers that LISTEN wake at once. A task due later (a delay, a retry's
backoff) is found by polling, as is everything when nobody listens. SQLite:
nothing (its workers share one machine and poll adaptively).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The channel; omniq.services._storage.WORK_CHANNEL listens on the same name.
CHANNEL = "omniq_work"
#: run_at (integer microseconds since the epoch, UTC) that counts as due: up to
#: one second ahead of the database's clock (the writer's clock may run ahead).
_DUE = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint + 1000000"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION omniq_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION omniq_notify_work_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM inserted WHERE status = 'pending' AND run_at <= {_DUE}) THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # One notification per statement that inserts pending tasks (enqueue_many
    # of 1,000 tasks sends one), ...
    op.execute(
        """
        CREATE TRIGGER omniq_tasks_work_inserted
        AFTER INSERT ON omniq_tasks
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION omniq_notify_work_inserted()
        """
    )
    # ... and per row moved to pending (PostgreSQL folds identical
    # notifications of one transaction into one).
    op.execute(
        f"""
        CREATE TRIGGER omniq_tasks_work_pending
        AFTER UPDATE OF status ON omniq_tasks
        FOR EACH ROW
        WHEN (
            NEW.status = 'pending'
            AND OLD.status IS DISTINCT FROM 'pending'
            AND NEW.run_at <= {_DUE}
        )
        EXECUTE FUNCTION omniq_notify_work()
        """
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS omniq_tasks_work_pending ON omniq_tasks")
    op.execute("DROP TRIGGER IF EXISTS omniq_tasks_work_inserted ON omniq_tasks")
    op.execute("DROP FUNCTION IF EXISTS omniq_notify_work()")
    op.execute("DROP FUNCTION IF EXISTS omniq_notify_work_inserted()")
