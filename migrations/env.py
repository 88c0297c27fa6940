"""Alembic environment for OmniQ (async engines: aiosqlite, asyncpg).

The URL comes from ``-x url=...``, else ``OMNIQ_DATABASE_URL``, else the
embedded default ``./omniq_data/omniq.db``. On PostgreSQL the schema of
OmniQ's tables comes from ``-x schema=...``, else ``OMNIQ_DB_SCHEMA`` (none:
the default schema). When OmniQ runs migrations itself (``omniq.db.migrate``)
it hands in a connection (which carries the schema) instead.

OmniQ's revision is kept in its own version table, ``omniq_alembic_version``,
so the application's own Alembic environment (``alembic_version``) can share
the database; a database whose ``alembic_version`` holds an OmniQ revision
(older OmniQ) is adopted first. Comparisons (``alembic check``) look at
OmniQ's tables only.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from omniq.db import coexist
from omniq.db.engine import create_engine, default_sqlite_url, schema_of
from omniq.db.schema import metadata
from omniq.models.settings import Settings

config = context.config


def _url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    return (
        x_args.get("url")
        or config.attributes.get("omniq_url")
        or os.environ.get("OMNIQ_DATABASE_URL")
        or default_sqlite_url()
    )


def _schema() -> str | None:
    x_args = context.get_x_argument(as_dictionary=True)
    return x_args.get("schema") or os.environ.get("OMNIQ_DB_SCHEMA") or None


def _run(connection: Connection) -> None:
    schema = schema_of(connection)
    coexist.prepare_connection(connection, schema, create=True)
    coexist.adopt_legacy_version_table(connection, schema, context.script)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        **coexist.context_options(schema),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    schema = _schema()
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=_url().startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
        **coexist.context_options(schema),
    )
    with context.begin_transaction():
        if schema is not None:
            Settings(db_schema=schema)  # the name is checked before it is written into SQL
            context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            context.execute(f'SET LOCAL search_path TO "{schema}"')
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_url(), Settings(db_schema=_schema()))
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
