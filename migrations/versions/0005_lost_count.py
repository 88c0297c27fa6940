"""tasks.lost_count: how often a task's lease expired and was recovered

Crash semantics (issue "One trustworthy core"): a claimed task that never
started goes back to pending without spending anything, and a task that was
running when its worker died is retried from a crash budget separate from
``max_retries``. A task that was recovered before is marked started in the
database before its function runs again, so a task that kills its worker
still stops. ``attempts`` now counts starts, not claims.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, never a table rebuild: a rebuild on SQLite would
    # re-create the claim indexes from reflection and lose their DESC order.
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.add_column(
            sa.Column("lost_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN (SQLite >= 3.35), for the same reason.
    with op.batch_alter_table("omniq_tasks", recreate="never") as batch:
        batch.drop_column("lost_count")
