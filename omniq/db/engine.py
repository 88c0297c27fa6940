"""Engine URL -> AsyncEngine, with the SQLite settings that make it a safe queue store.

SQLite: WAL, ``busy_timeout``, ``foreign_keys=ON``, ``synchronous=NORMAL`` (FULL
by option), the driver's own transaction handling off, and ``BEGIN IMMEDIATE``
for write transactions so that a transaction that reads then writes can never
be interleaved with another writer. Read-only work uses :func:`read_engine`,
whose transactions start with a plain (deferred) ``BEGIN``.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from omniq.db.driver_exec import OWN_ENGINE, run_on_driver
from omniq.db.driver_query import DriverQuery
from omniq.db.driver_rows import DriverRows
from omniq.db.values import COMPACT, converter, one_value, stored_type
from omniq.errors import ConfigurationError
from omniq.models.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("omniq.db")

MIN_SQLITE = (3, 35, 0)
_WAL_SIZE_LIMIT = 16 * 1024 * 1024
_READ_OPTION = "omniq_read"

__all__ = [
    "Dialect",
    "create_engine",
    "default_sqlite_url",
    "dialect_of",
    "install_sqlite_events",
    "is_memory_sqlite",
    "memory_sqlite_engine",
    "normalize_url",
    "read_engine",
    "schema_of",
    "server_connect_args",
    "sqlite_path",
    "sqlite_writer_engine",
    "with_schema",
]


@attrs.frozen
class Dialect:
    """The per-engine differences, in one place."""

    name: str
    #: The claim's subselect adds FOR UPDATE SKIP LOCKED (PostgreSQL).
    skip_locked: bool
    #: Write transactions serialize on the database (SQLite: BEGIN IMMEDIATE).
    single_writer: bool

    def insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT into ``table`` that supports this engine's ``ON CONFLICT`` clauses."""
        if self.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # --- batch statements: one fixed statement per batch, whatever its size -----------
    #
    # A batch of rows is bound as data, not as n parameter sets, and read back
    # as rows inside the statement: the statement's text does not depend on the
    # batch size, and a batch of n rows is one statement instead of n.
    # PostgreSQL binds one array per column and reads them with ``unnest``
    # (asyncpg prepares the statement once per connection, the server plans it
    # once). SQLite binds the rows as one JSON text and reads it with
    # ``json_each``: one statement step instead of n, each of which would let
    # the event loop's thread take the GIL from the writer thread.

    def batch_rows(
        self, name: str, columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]]
    ) -> Batch:
        """Rows of a batch, usable in FROM: ``name(<key>, ...)``; see :class:`Batch`."""
        return Batch(self.name, name, tuple(columns))

    def driver_rows(
        self, stmt: sa.Insert, columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]]
    ) -> DriverRows | None:
        """SQLite: ``stmt`` run per row by the driver (see :class:`DriverRows`); else None."""
        return DriverRows(stmt, columns) if self.name == "sqlite" else None

    def driver_query(self, stmt: sa.Update) -> DriverQuery | None:
        """SQLite: ``stmt`` (returning rows) run by the driver (see :class:`DriverQuery`),
        where it can be compiled once; else None (run by SQLAlchemy)."""
        return DriverQuery.of(stmt) if self.name == "sqlite" else None


class Batch:
    """A batch of rows bound as data: ``.c`` are its columns, :meth:`params` binds rows."""

    def __init__(
        self, engine: str, name: str, columns: tuple[tuple[str, sa.types.TypeEngine[Any]], ...]
    ) -> None:
        self.keys = [key for key, _ in columns]
        #: A row mapping -> its values in column order.
        self._getter: Callable[[Mapping[str, Any]], Sequence[Any]] = (
            operator.itemgetter(*self.keys) if len(self.keys) > 1 else one_value(self.keys[0])
        )
        self._engine = engine
        self._bind = f"b_{name}"
        if engine == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            # Instants and durations are converted here (inline when canonical) and
            # bound as arrays of their stored type: the array type would otherwise
            # run the column type's processor element by element.
            pg = sa.engine.default.DefaultDialect()  # our types ignore the dialect
            stored = [stored_type(type_) for _, type_ in columns]
            binds = [
                sa.bindparam(f"b_{key}", type_=ARRAY(bound))
                for (key, _), bound in zip(columns, stored, strict=True)
            ]
            self.rows: sa.FromClause = (
                sa.func.unnest(*binds)
                .table_valued(*(sa.column(key, type_) for key, type_ in columns))
                .render_derived(name=name)
            )
            self._convert: list[tuple[int, Callable[[Any], Any]]] = [
                (i, converter(type_, pg))
                for i, ((_, type_), bound) in enumerate(zip(columns, stored, strict=True))
                if bound is not type_
            ]
            return
        from sqlalchemy.dialects import sqlite

        dialect = sqlite.dialect()
        each = sa.func.json_each(sa.bindparam(self._bind, type_=sa.String)).table_valued("value")
        self.rows = (
            sa.select(
                *(
                    sa.type_coerce(sa.func.json_extract(each.c.value, f"$[{i}]"), type_).label(key)
                    for i, (key, type_) in enumerate(columns)
                )
            )
            .select_from(each)
            .subquery(name)
        )
        # The SELECT hands SQLite the stored values: bind processing happens here,
        # once per value, so it is the batch's cost: each column gets the cheapest
        # converter that stores what its type's bind processor would store.
        # JSON columns ride inside the batch's JSON as they are: json_extract
        # returns an array or object as its JSON text, which is what they store.
        converters = [converter(type_, dialect) for _, type_ in columns]
        self._convert = [(i, fn) for i, fn in enumerate(converters) if fn is not None]

    @property
    def c(self) -> Any:
        """The batch's columns."""
        return self.rows.c

    def params(self, rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]]) -> dict[str, Any]:
        """The parameters binding ``rows`` (mappings by key, or tuples in column order)."""
        if rows and isinstance(rows[0], Mapping):
            get = self._getter
            tuples: list[Sequence[Any]] = [get(row) for row in rows]  # type: ignore[arg-type]
        else:
            tuples = list(rows)  # type: ignore[arg-type]
        if self._engine == "postgresql":
            columns = [list(col) for col in zip(*tuples, strict=True)] or [[] for _ in self.keys]
            for i, fn in self._convert:
                columns[i] = [None if value is None else fn(value) for value in columns[i]]
            return {f"b_{key}": col for key, col in zip(self.keys, columns, strict=True)}
        convert = self._convert
        data = []
        for row in tuples:
            values = list(row)
            for i, fn in convert:
                value = values[i]
                if value is not None:
                    values[i] = fn(value)
            data.append(values)
        return {self._bind: COMPACT.encode(data)}


def dialect_of(engine: AsyncEngine | sa.engine.Connection | sa.Dialect) -> Dialect:
    """The :class:`Dialect` strategy for an engine or connection."""
    name = engine.name if isinstance(engine, sa.Dialect) else engine.dialect.name
    if name == "sqlite":
        return Dialect(name="sqlite", skip_locked=False, single_writer=True)
    if name == "postgresql":
        return Dialect(name="postgresql", skip_locked=True, single_writer=False)
    raise ConfigurationError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")


def default_sqlite_url(
    project_name: str = "omniq", base_dir: str | os.PathLike[str] = "omniq_data"
) -> str:
    """The embedded default: ``sqlite+aiosqlite:///<base_dir>/<project_name>.db``.

    ``project_name`` names the file: a non-empty string without a path separator or NUL.
    """
    if (
        not isinstance(project_name, str)
        or not project_name
        or any(c in project_name for c in ("/", os.sep, "\x00"))
    ):
        raise ConfigurationError(
            f"project_name must be a non-empty name without '/' or NUL (it names the "
            f"database file <base_dir>/<project_name>.db), got {project_name!r}"
        )
    return f"sqlite+aiosqlite:///{Path(base_dir) / f'{project_name}.db'}"


def normalize_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url`` and pick the async driver: aiosqlite or asyncpg."""
    try:
        parsed = sa.make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"invalid database URL {str(url)!r}: {exc}") from None
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigurationError(f"invalid database URL {shown!r}: a port is 1-65535")
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise ConfigurationError(f"SQLite URLs use the aiosqlite driver, not {driver!r}")
        if (
            not parsed.database
            or parsed.database == ":memory:"
            or parsed.database.startswith("file::memory:")
        ):
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared by workers; "
                "use a file, e.g. sqlite+aiosqlite:///omniq_data/omniq.db"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise ConfigurationError(f"PostgreSQL URLs use the asyncpg driver, not {driver!r}")
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigurationError(
        f"unsupported database URL scheme {parsed.drivername!r}: "
        "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
    )


def sqlite_path(url: sa.URL) -> Path | None:
    """The database file of a SQLite URL (None for other engines)."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def full_file_system(url: sa.URL) -> str | None:
    """The folder of a SQLite URL's file when its file system has no free space, else None.

    (SQLite reports a file system with no room for its WAL and shared-memory
    files as a "disk I/O error", not as "database or disk is full".)
    """
    path = sqlite_path(url)
    if path is None:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    return str(path.parent) if free < 64 * 1024 else None


def _prepare_sqlite_file(path: Path) -> None:
    """Create the directory (0700) and the database file (0600) if missing."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigurationError(
            f"OmniQ needs SQLite >= {'.'.join(map(str, MIN_SQLITE))} (RETURNING); "
            f"this Python links {sqlite3.sqlite_version}"
        )
    directory = path.parent
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o002:
                log.warning("database file %s is world-writable; chmod 600 it", path)
        else:
            os.close(fd)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the SQLite database {str(path)!r}: {exc.strerror or exc}"
        ) from None


def is_memory_sqlite(url: str | sa.URL) -> bool:
    """True for an in-memory SQLite URL (``sqlite+aiosqlite:///:memory:``, ``sqlite://``)."""
    try:
        parsed = sa.make_url(url)
    except Exception:
        return False
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:")


def memory_sqlite_engine(
    settings: Settings | None = None, *, own: bool = True, **engine_kwargs: Any
) -> AsyncEngine:
    """An engine on a new private in-memory SQLite database: one connection, shared.

    Every use of the engine is that one connection (a static pool), so the
    database lives as long as the engine; :class:`omniq.services.Storage` runs
    its transactions on it one at a time. For eager mode and tests in one
    process: nothing is written to disk, and no other process can see it.
    """
    settings = settings or Settings()
    engine_kwargs.setdefault("json_deserializer", _lenient_json_loads)
    engine = create_async_engine(
        "sqlite+aiosqlite://", poolclass=sa.pool.StaticPool, **engine_kwargs
    )
    install_sqlite_events(engine.sync_engine, settings, own=own)
    return engine


def create_engine(
    url: str | sa.URL, settings: Settings | None = None, *, own: bool = True, **engine_kwargs: Any
) -> AsyncEngine:
    """Create the AsyncEngine for ``url`` with OmniQ's per-engine settings.

    An in-memory SQLite URL gets a private database on one shared connection
    (see :func:`memory_sqlite_engine`). ``own=False``: an engine whose
    connections are lent to the application (see :func:`install_sqlite_events`).
    """
    settings = settings or Settings()
    if is_memory_sqlite(url) and sa.make_url(url).drivername in ("sqlite", "sqlite+aiosqlite"):
        return memory_sqlite_engine(settings, own=own, **engine_kwargs)
    parsed = normalize_url(url)
    _check_schema_supported(parsed.get_backend_name(), settings.db_schema)
    if settings.db_schema is not None:
        options = dict(engine_kwargs.get("execution_options") or {})
        options["schema_translate_map"] = _translate_map(options, settings.db_schema)
        engine_kwargs["execution_options"] = options
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        assert path is not None
        _prepare_sqlite_file(path)
        engine_kwargs.setdefault("json_deserializer", _lenient_json_loads)
        engine = create_async_engine(parsed, **engine_kwargs)
        install_sqlite_events(engine.sync_engine, settings, own=own)
        return engine
    engine_kwargs.setdefault("pool_pre_ping", True)
    engine_kwargs["connect_args"] = {
        **server_connect_args(parsed, settings),
        **(engine_kwargs.get("connect_args") or {}),
    }
    return create_async_engine(parsed, **engine_kwargs)


def server_connect_args(url: sa.URL, settings: Settings) -> dict[str, Any]:
    """The driver's arguments that bound each wait for a server's reply, and for a
    connection (``Settings.server_timeout``; asyncpg's ``command_timeout`` and
    ``timeout``); empty for other drivers or with no bound."""
    if settings.server_timeout is None or url.get_driver_name() != "asyncpg":
        return {}
    seconds = settings.server_timeout.total_seconds()
    return {"command_timeout": seconds, "timeout": seconds}


#: The execution option that puts OmniQ's schema-less tables in ``Settings.db_schema``.
_TRANSLATE = "schema_translate_map"


def _check_schema_supported(backend: str, schema: str | None) -> None:
    if schema is not None and backend != "postgresql":
        raise ConfigurationError(
            f"db_schema={schema!r} needs PostgreSQL: SQLite has no schemas "
            "(its namespace is the database file: give OmniQ a file of its own instead)"
        )


def _translate_map(options: Mapping[str, Any], schema: str) -> dict[str | None, str | None]:
    current = dict(options.get(_TRANSLATE) or {})
    if current.get(None, schema) != schema:
        raise ConfigurationError(
            f"db_schema={schema!r} conflicts with the engine's schema_translate_map {current!r}"
        )
    current[None] = schema
    return current


def schema_of(bind: AsyncEngine | sa.Engine | sa.Connection) -> str | None:
    """The schema OmniQ's tables live in on ``bind`` (None: the default schema).

    It is carried by the engine itself, as SQLAlchemy's ``schema_translate_map``
    execution option (``{None: schema}``), so every statement built from the
    schema-less metadata of :mod:`omniq.db.schema` names the schema.
    """
    translate = bind.get_execution_options().get(_TRANSLATE) or {}
    schema = translate.get(None)
    return schema if isinstance(schema, str) else None


def with_schema(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """``engine`` with ``settings.db_schema`` applied (as is when it already carries it).

    For an engine made elsewhere (by the application): the result shares its
    pool and differs only in its execution options.
    """
    schema = settings.db_schema
    _check_schema_supported(engine.dialect.name, schema)
    if schema is None or schema_of(engine) == schema:
        return engine
    translate = _translate_map(engine.get_execution_options(), schema)
    return engine.execution_options(**{_TRANSLATE: translate})


class MalformedJSON:
    """What a SQLite JSON column holding invalid JSON (a hand-written row) reads as.

    The models reject it, naming the field, so the row is quarantined instead of
    the whole query failing (one bad row must not stop a worker's claims).
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<malformed JSON {self.text[:60]!r}>"


def _lenient_json_loads(text: str) -> Any:
    if text == "[]":
        return []  # most documents a claim reads: a task's empty tags and depends_on
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return MalformedJSON(text)


def read_engine(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` (same pool) whose transactions are read-only and deferred."""
    return engine.execution_options(**{_READ_OPTION: True})


def sqlite_writer_engine(url: sa.URL, settings: Settings, *, own: bool = True) -> sa.Engine:
    """A sync (pysqlite) engine on the same SQLite file, for the writer thread.

    Same pragmas, same BEGIN IMMEDIATE, same lenient JSON reading as the async
    engine; one connection, used by one thread at a time.
    """
    path = sqlite_path(url)
    assert path is not None
    engine = sa.create_engine(
        sa.URL.create("sqlite+pysqlite", database=str(path)),
        json_deserializer=_lenient_json_loads,
        poolclass=sa.pool.NullPool,
        # One thread at a time (the writer's lock): the writer thread, or the
        # event loop's thread running a small write inline.
        connect_args={"check_same_thread": False},
    )
    install_sqlite_events(engine, settings, own=own)
    return engine


def install_sqlite_events(engine: sa.Engine, settings: Settings, *, own: bool = True) -> None:
    """Pragmas on connect; the driver's transaction handling off; BEGIN IMMEDIATE for writes.

    The recipe of SQLAlchemy's SQLite dialect docs ("Serializable isolation /
    Savepoints / Transactional DDL"), with IMMEDIATE for write transactions.
    ``own``: an engine only OmniQ uses (not one whose connections are lent to
    the application); it is marked (:data:`OWN_ENGINE`) and its hot statements,
    this hook's ``BEGIN`` among them, go to the driver (see
    :mod:`omniq.db.driver_exec`).
    """
    if own:
        engine.update_execution_options(**{OWN_ENGINE: True})
    busy_ms = int(settings.busy_timeout.total_seconds() * 1000)
    synchronous = settings.sqlite_synchronous
    max_pages = settings.sqlite_max_page_count

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver; the "begin" hook below
        # emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            # After a long reader held checkpoints back, the next reset of the WAL
            # truncates it to this size instead of keeping its high-water mark.
            cursor.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            if max_pages is not None:
                cursor.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.engine.Connection) -> None:
        options = conn.get_execution_options()
        begin = "BEGIN" if options.get(_READ_OPTION) else "BEGIN IMMEDIATE"
        if options.get(OWN_ENGINE):
            # Straight to the driver (see omniq.db.driver_exec): this hook is the begin.
            run_on_driver(conn, begin, (), autobegin=False)
        else:
            conn.exec_driver_sql(begin)
