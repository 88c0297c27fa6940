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


def downgrade() -> None:
    op.drop_table("omniq_db_migration")
