"""Programmatic Alembic: upgrade, downgrade, current revision, check, schema guard.

The migration scripts ship inside the package (``omniq._migrations``), so
these work from a wheel install with no checkout.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from importlib import resources
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.db.engine import create_engine
from omniq.db.schema import metadata
from omniq.errors import SchemaOutOfDate

__all__ = [
    "check",
    "check_async",
    "current",
    "current_async",
    "diff_async",
    "downgrade",
    "downgrade_async",
    "ensure_schema",
    "head",
    "upgrade",
    "upgrade_async",
]


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
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("omniq._migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The head revision of the migrations shipped with this OmniQ."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


async def _with_connection(engine: AsyncEngine, fn: Any, *args: Any) -> Any:
    async with engine.begin() as conn:
        return await conn.run_sync(fn, *args)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, revision: str) -> None:
    token = _held.set([])
    try:
        command.upgrade(_config(connection), revision)
    finally:
        _held.reset(token)


def _downgrade(connection: Connection, revision: str) -> None:
    token = _held.set([])
    try:
        command.downgrade(_config(connection), revision)
    finally:
        _held.reset(token)


def _diffs(connection: Connection) -> list[Any]:
    diffs: list[Any] = compare_metadata(MigrationContext.configure(connection), metadata)
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
    at = await current_async(engine)
    target = head()
    if at == target:
        return
    if auto_migrate:
        await upgrade_async(engine)
        return
    raise SchemaOutOfDate(at, target)


def _run(url: str, fn: Any, *args: Any) -> Any:
    async def main() -> Any:
        engine = create_engine(url)
        try:
            return await fn(engine, *args)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (sync; no running loop allowed)."""
    _run(url, upgrade_async, revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision`` (sync)."""
    _run(url, downgrade_async, revision)


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at (sync)."""
    return _run(url, current_async)  # type: ignore[no-any-return]


def check(url: str) -> None:
    """Raise :class:`SchemaOutOfDate` if the database at ``url`` differs from the metadata."""
    _run(url, check_async)
