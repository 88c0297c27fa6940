"""Alembic environment for OmniQ (async engines: aiosqlite, asyncpg).

The URL comes from ``-x url=...``, else ``OMNIQ_DATABASE_URL``, else the
embedded default ``./omniq_data/omniq.db``. When OmniQ runs migrations
itself (``omniq.db.migrate``) it hands in a connection instead.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from omniq.db.engine import create_engine, default_sqlite_url
from omniq.db.schema import metadata

config = context.config


def _url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    return (
        x_args.get("url")
        or config.attributes.get("omniq_url")
        or os.environ.get("OMNIQ_DATABASE_URL")
        or default_sqlite_url()
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=_url().startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_url())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run migrations on a connection handed in by OmniQ, or on a new engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
