"""flow control: per-key concurrency and rate limits, queue limits and pause

Issue 16: tasks carry their concurrency and rate keys with the limits they
were declared with (NULL for tasks without limits), and ``omniq_limits`` holds
one row per key (kind "concurrency", "rate" or "queue"): the claim locks the
rows of the keys it considers, counts the running tasks of each concurrency
key, refills and spends rate tokens, and skips paused queues.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = ("concurrency_key", "rate_key")


def upgrade() -> None:
    with op.batch_alter_table("omniq_tasks") as batch:
        batch.add_column(sa.Column("concurrency_key", sa.String(200)))
        batch.add_column(sa.Column("concurrency_max", sa.Integer()))
        batch.add_column(sa.Column("rate_key", sa.String(200)))
        batch.add_column(sa.Column("rate_limit", sa.Integer()))
        batch.add_column(sa.Column("rate_period", sa.Float()))
    for column in _KEYS:
        keyed = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_omniq_tasks_{column}",
            "omniq_tasks",
            [column, "status"],
            sqlite_where=keyed,
            postgresql_where=keyed,
        )
    op.create_table(
        "omniq_limits",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("max_running", sa.Integer()),
        sa.Column("rate_limit", sa.Integer()),
        sa.Column("rate_period", sa.Float()),
        sa.Column("tokens", sa.Float()),
        sa.Column("refilled_at", sa.BigInteger()),
        sa.Column("paused_at", sa.BigInteger()),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_omniq_limits"),
    )


def downgrade() -> None:
    op.drop_table("omniq_limits")
    for column in _KEYS:
        op.drop_index(f"ix_omniq_tasks_{column}", table_name="omniq_tasks")
    with op.batch_alter_table("omniq_tasks") as batch:
        for column in ("rate_period", "rate_limit", "rate_key", "concurrency_max"):
            batch.drop_column(column)
        batch.drop_column("concurrency_key")
