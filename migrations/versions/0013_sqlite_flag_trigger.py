"""SQLite: the trigger refusing new tasks exists only while the database is flagged

Revision 0012 created, on SQLite, a ``BEFORE INSERT`` trigger on
``omniq_tasks`` whose ``WHEN`` read ``omniq_db_migration`` on every inserted
row (SQLite triggers are per row): every enqueue paid for it, about a third of
``enqueue_many``'s speed on a database that was never migrated. From here on,
``omniq migrate-db`` creates the trigger (with no ``WHEN``) in the transaction
that flags the source, and ``--unflag`` drops it in the transaction that
clears the flag (``omniq.repositories.db_migration``). This revision drops
0012's trigger and, on a database flagged already, creates the new one.
PostgreSQL is untouched: its trigger runs once per statement.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The same text as in revision 0012 (omniq.repositories._base.MIGRATED).
_MIGRATED = "omniq: this database was migrated away"
_FLAGGED = "EXISTS (SELECT 1 FROM omniq_db_migration WHERE role = 'source')"
_DROP = "DROP TRIGGER IF EXISTS omniq_tasks_refuse_if_migrated"


def _create(when: str) -> str:
    return f"""
        CREATE TRIGGER omniq_tasks_refuse_if_migrated
        BEFORE INSERT ON omniq_tasks
        {when}
        BEGIN
            SELECT RAISE(ABORT, '{_MIGRATED}');
        END
        """


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.execute(_DROP)
    flagged = op.get_bind().execute(sa.text(f"SELECT {_FLAGGED}")).scalar()
    if flagged:
        op.execute(_create(""))


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.execute(_DROP)
    op.execute(_create(f"WHEN {_FLAGGED}"))
