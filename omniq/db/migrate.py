"""Programmatic Alembic: upgrade, downgrade, current revision, check, schema guard.

The migration scripts ship inside the package (``omniq._migrations``), so
these work from a wheel install with no checkout. OmniQ's revision lives in
its own version table, :data:`VERSION_TABLE` (see :mod:`omniq.db.coexist`);
on PostgreSQL the schema is the engine's (``Settings.db_schema``, or
``schema=`` of the sync functions).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.db import coexist
from omniq.db.coexist import VERSION_TABLE
from omniq.db.engine import create_engine, schema_of
from omniq.errors import SchemaOutOfDate
from omniq.models.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

# Alembic (with Mako) is imported only when a migration, a check or a revision
# walk runs: opening a database that is already at head needs neither (it reads
# the version table with one SELECT), so commands and workers start faster.

__all__ = [
    "VERSION_TABLE",
    "alembic_config",
    "check",
    "check_async",
    "current",
    "current_async",
    "current_revision",
    "diff_async",
    "downgrade",
    "downgrade_async",
    "ensure_schema",
    "head",
    "upgrade",
    "upgrade_async",
]


def alembic_config() -> Config:
    """The Alembic configuration of the migrations shipped with this OmniQ."""
    return _config()


#: While this context runs an upgrade or downgrade: Alembic's connection
#: lines held back until a migration step actually runs (None: not migrating).
_held: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "omniq_alembic_held", default=None
)


class _QuietUnlessMigrating(logging.Filter):
    """Alembic's "Context impl ..." / "Will assume ..." lines only when a migration runs.

    Alembic logs them each time OmniQ reads the revision (every start) and
    on an upgrade that finds nothing to do; they say nothing then. During an
    upgrade or downgrade they are held back and let out just before the
    first "Running upgrade ..." line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        chatter = str(record.msg).startswith(("Context impl", "Will assume"))
        held = _held.get()
        if held is None:
            return not chatter
        if chatter:
            held.append(record)
            return False
        if str(record.msg).startswith("Running ") and held:
            logger = logging.getLogger(record.name)
            for earlier in held:
                logger.callHandlers(earlier)
            held.clear()
        return True


logging.getLogger("alembic.runtime.migration").addFilter(_QuietUnlessMigrating())


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("omniq._migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The head revision of the migrations shipped with this OmniQ."""
    return _shipped_head() or _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


_REVISION = re.compile(r'^revision(?:: str)? = "([^"]+)"$', re.M)
_DOWN = re.compile(r'^down_revision(?:: [^=]+)? = (?:None|"([^"]*)")$', re.M)


@functools.cache
def _shipped_head() -> str | None:
    """The head read from the shipped revision files' ``revision``/``down_revision``
    lines without importing Alembic; None (Alembic decides) unless exactly one head
    is found in a plain linear chain."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        versions = resources.files("omniq._migrations").joinpath("versions")
        for entry in versions.iterdir():
            if not entry.name.endswith(".py") or entry.name.startswith("_"):
                continue
            text = entry.read_text(encoding="utf-8")
            found, down = _REVISION.findall(text), _DOWN.findall(text)
            if len(found) != 1 or len(down) != 1:
                return None
            revisions.add(found[0])
            if down[0]:
                parents.add(down[0])
    except (OSError, ValueError):
        return None
    heads = revisions - parents
    if len(heads) != 1 or not parents <= revisions or len(parents) != len(revisions) - 1:
        return None
    return heads.pop()


async def _with_connection(engine: AsyncEngine, fn: Any, *args: Any) -> Any:
    async with engine.begin() as conn:
        return await conn.run_sync(_prepared, fn, *args)


def _prepared(connection: Connection, fn: Any, *args: Any) -> Any:
    """Run ``fn`` on OmniQ's schema (PostgreSQL), after adopting an old version table."""
    from alembic.script import ScriptDirectory

    schema = schema_of(connection)
    coexist.prepare_connection(connection, schema, create=fn is _upgrade)
    coexist.adopt_legacy_version_table(connection, schema, ScriptDirectory.from_config(_config()))
    return fn(connection, *args)


def _context(connection: Connection) -> MigrationContext:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(
        connection, opts=coexist.context_options(schema_of(connection))
    )


def _current(connection: Connection) -> str | None:
    return _context(connection).get_current_revision()


def current_revision(connection: Connection) -> str | None:
    """The revision of OmniQ's schema seen through ``connection`` (an application's, too)."""
    return _current(connection)


def _current_fast(connection: Connection) -> str | None:
    """The revision in OmniQ's version table, read with Core (no Alembic import).

    None when that is not plain: no version table yet (a new database, or one
    whose old ``alembic_version`` is still to be adopted) or several rows;
    the caller then asks Alembic (:func:`current_async`).
    """
    schema = schema_of(connection)
    if not sa.inspect(connection).has_table(VERSION_TABLE, schema=schema):
        return None
    table = sa.table(VERSION_TABLE, sa.column("version_num", sa.String), schema=schema)
    rows = connection.execute(sa.select(table.c.version_num)).scalars().all()
    return str(rows[0]) if len(rows) == 1 else None


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    token = _held.set([])
    try:
        command.upgrade(_config(connection), revision)
    finally:
        _held.reset(token)


def _downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    token = _held.set([])
    try:
        command.downgrade(_config(connection), revision)
    finally:
        _held.reset(token)


def _diffs(connection: Connection) -> list[Any]:
    from alembic.autogenerate import compare_metadata

    from omniq.db.schema import metadata

    diffs: list[Any] = compare_metadata(_context(connection), metadata)
    return diffs


async def upgrade_async(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database of ``engine`` to ``revision`` (default: head)."""
    await _with_connection(engine, _upgrade, revision)


async def downgrade_async(engine: AsyncEngine, revision: str = "base") -> None:
    """Downgrade the database of ``engine`` to ``revision`` (default: base)."""
    await _with_connection(engine, _downgrade, revision)


async def current_async(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None when it was never migrated)."""
    return await _with_connection(engine, _current)  # type: ignore[no-any-return]


async def diff_async(engine: AsyncEngine) -> list[Any]:
    """Differences between the database and the metadata (empty when in sync)."""
    return await _with_connection(engine, _diffs)  # type: ignore[no-any-return]


async def check_async(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaOutOfDate` if the database differs from the metadata."""
    diffs = await diff_async(engine)
    if diffs:
        raise SchemaOutOfDate(await current_async(engine), f"{head()} (differences: {diffs!r})")


async def ensure_schema(engine: AsyncEngine, *, auto_migrate: bool) -> None:
    """Make sure the database is at head: upgrade when allowed, else raise."""
    async with engine.begin() as conn:
        at = await conn.run_sync(_current_fast)
    target = head()
    if at != target:
        at = await current_async(engine)  # adoption, then Alembic decides
    if at == target:
        return
    if auto_migrate:
        await upgrade_async(engine)
        return
    raise SchemaOutOfDate(at, target)


def _run(url: str, schema: str | None, fn: Any, *args: Any) -> Any:
    async def main() -> Any:
        engine = create_engine(url, Settings(db_schema=schema, server_timeout=None))
        try:
            return await fn(engine, *args)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def upgrade(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Upgrade the database at ``url`` to ``revision`` (sync; no running loop allowed)."""
    _run(url, schema, upgrade_async, revision)


def downgrade(url: str, revision: str = "base", *, schema: str | None = None) -> None:
    """Downgrade the database at ``url`` to ``revision`` (sync)."""
    _run(url, schema, downgrade_async, revision)


def current(url: str, *, schema: str | None = None) -> str | None:
    """The revision the database at ``url`` is at (sync)."""
    return _run(url, schema, current_async)  # type: ignore[no-any-return]


def check(url: str, *, schema: str | None = None) -> None:
    """Raise :class:`SchemaOutOfDate` if the database at ``url`` differs from the metadata."""
    _run(url, schema, check_async)
