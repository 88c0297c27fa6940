"""Living beside the application's own Alembic: OmniQ's version table, schema and adoption.

OmniQ records its revision in a table of its own, :data:`VERSION_TABLE`
(``omniq_alembic_version``), so the application's ``alembic upgrade head``
(``alembic_version``) and OmniQ's upgrade never read or move each other's
revision. A database migrated by an OmniQ that still used ``alembic_version``
is adopted: its revision moves to :data:`VERSION_TABLE` the first time OmniQ
(or its Alembic environment) looks, but only when ``alembic_version`` holds
nothing but OmniQ's revisions; the application's own ``alembic_version`` is
left alone.

On PostgreSQL OmniQ may live in a schema of its own (``Settings.db_schema``):
the engine carries it as ``schema_translate_map`` (see
:func:`omniq.db.engine.schema_of`) and the migrations also run with the schema
as ``search_path``, so the raw SQL of the revisions (trigger functions)
lands there too, and comparing the database with the metadata sees only it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from omniq.db.schema import metadata

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# Alembic is imported only where a migration context is needed (adoption):
# opening a database at head reads the version table with Core.

__all__ = [
    "LEGACY_VERSION_TABLE",
    "VERSION_TABLE",
    "adopt_legacy_version_table",
    "context_options",
    "include_name",
    "prepare_connection",
]

log = logging.getLogger("omniq.db")

#: Where OmniQ's migrations record their revision.
VERSION_TABLE = "omniq_alembic_version"
#: Where OmniQ recorded it before (Alembic's default, which the application's own
#: Alembic environment uses too).
LEGACY_VERSION_TABLE = "alembic_version"
#: pg_advisory_xact_lock key serializing adoptions (two processes opening one database).
_ADOPTION_LOCK = 0x6F6D6E69_71_0001  # "omni" q 1


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: compare OmniQ's own tables only.

    The application's tables (and its ``alembic_version``) in the same
    database or schema are none of OmniQ's business: ``alembic check`` of
    OmniQ's environment does not propose to drop them.
    """
    if type_ == "table":
        return name in metadata.tables
    return True


def context_options(schema: str | None) -> dict[str, Any]:
    """Options for ``context.configure`` / ``MigrationContext.configure`` of OmniQ's migrations."""
    return {
        "version_table": VERSION_TABLE,
        "version_table_schema": schema,
        "include_name": include_name,
    }


def prepare_connection(connection: sa.Connection, schema: str | None, *, create: bool) -> None:
    """PostgreSQL with a schema: create it if missing (``create``), and make it the search path.

    ``SET LOCAL``: the search path lasts until the end of the connection's
    current transaction (the migration's), and the connection goes back to
    the pool as it came.
    """
    if schema is None or connection.dialect.name != "postgresql":
        return
    if create:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = :name"),
            {"name": schema},
        ).first()
        if exists is None:
            # The name was validated by Settings (a plain identifier); quoted all the same.
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            log.info("created schema %s for OmniQ's tables", schema)
    connection.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')


def _revisions_of(script: ScriptDirectory) -> set[str]:
    """Every revision id of OmniQ's migrations."""
    return {rev.revision for rev in script.walk_revisions("base", "heads")}


def adopt_legacy_version_table(
    connection: sa.Connection, schema: str | None, script: ScriptDirectory
) -> str | None:
    """Move OmniQ's revision from ``alembic_version`` to :data:`VERSION_TABLE`; the revision moved.

    Runs in the caller's transaction. Only when :data:`VERSION_TABLE` does not
    exist yet and ``alembic_version`` (in the same schema) holds exactly one
    row that is one of OmniQ's revisions; ``alembic_version`` is then
    dropped. Anything else (no legacy table, the application's revision in
    it) is left untouched and None is returned.
    """
    if not _legacy_candidate(connection, schema):
        return None
    if connection.dialect.name == "postgresql":
        # Two processes opening the same old database: the second waits here,
        # then finds the work done.
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADOPTION_LOCK)))
        if not _legacy_candidate(connection, schema):
            return None
    legacy = sa.Table(
        LEGACY_VERSION_TABLE,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        schema=schema,
    )
    found: list[str] = list(connection.execute(sa.select(legacy.c.version_num)).scalars())
    if not _only_ours(found, _revisions_of(script)):
        log.debug("%s holds %s: not OmniQ's, left alone", LEGACY_VERSION_TABLE, found)
        return None
    revision = found[0]
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts=context_options(schema))
    context.stamp(script, revision)
    legacy.drop(connection)
    log.warning(
        "adopted OmniQ's revision %s from table %s into %s (OmniQ's own version table)",
        revision,
        LEGACY_VERSION_TABLE,
        VERSION_TABLE,
    )
    return revision


def _legacy_candidate(connection: sa.Connection, schema: str | None) -> bool:
    # OmniQ's tables must be there too: an application that numbers its own
    # revisions "0001"... keeps its alembic_version when OmniQ never ran here.
    inspector = sa.inspect(connection)
    return (
        not inspector.has_table(VERSION_TABLE, schema=schema)
        and inspector.has_table(LEGACY_VERSION_TABLE, schema=schema)
        and inspector.has_table("omniq_tasks", schema=schema)
    )


def _only_ours(found: Iterable[str], ours: Collection[str]) -> bool:
    found = list(found)
    return len(found) == 1 and found[0] in ours
