"""migrate-db: the migration marker of ``omniq migrate-db``

Issue 17: ``omniq_db_migration`` holds at most one row per role. On the
source of a migration, role ``source`` stops claims and schedule fires and
makes enqueues fail with ``DatabaseMigrated`` (naming where the queue went);
on the target, role ``target`` records the copy it received, so an
interrupted migration is resumed and a target holding other data refused.
Self-contained: one new table.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: What the trigger below raises; omniq.repositories._base turns it into DatabaseMigrated.
MIGRATED = "omniq: this database was migrated away"
_FLAGGED = "EXISTS (SELECT 1 FROM omniq_db_migration WHERE role = 'source')"


def upgrade() -> None:
    op.create_table(
        "omniq_db_migration",
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("migration_id", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cutoff", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("role", name=op.f("pk_omniq_db_migration")),
    )
    # A flagged source refuses new tasks in the database itself: every enqueue path
    # (the caller's transaction included) inserts into omniq_tasks, and the check
    # costs no statement of its own.
    if op.get_context().dialect.name == "postgresql":
        # Pinned to the schema the tables are created in (Settings.db_schema).
        op.execute(
            f"""
            CREATE FUNCTION omniq_refuse_if_migrated() RETURNS trigger LANGUAGE plpgsql
            SET search_path FROM CURRENT AS $$
            BEGIN
                IF {_FLAGGED} THEN
                    RAISE EXCEPTION '{MIGRATED}';
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER omniq_tasks_refuse_if_migrated
            BEFORE INSERT ON omniq_tasks
            FOR EACH STATEMENT EXECUTE FUNCTION omniq_refuse_if_migrated()
            """
        )
    else:
        op.execute(
            f"""
            CREATE TRIGGER omniq_tasks_refuse_if_migrated
            BEFORE INSERT ON omniq_tasks
            WHEN {_FLAGGED}
            BEGIN
                SELECT RAISE(ABORT, '{MIGRATED}');
            END
            """
        )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS omniq_tasks_refuse_if_migrated"
        + (" ON omniq_tasks" if op.get_context().dialect.name == "postgresql" else "")
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS omniq_refuse_if_migrated()")
    op.drop_table("omniq_db_migration")
