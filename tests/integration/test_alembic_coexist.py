"""OmniQ's migrations beside the application's own Alembic environment, in one database.

OmniQ keeps its revision in ``omniq_alembic_version``; the application keeps
``alembic_version``. A sample application (an ``alembic.ini``, an async
``env.py`` using the README's ``include_object`` recipe, one revision creating
a table) is written to tmp_path and driven with the ``alembic`` command, and
OmniQ with ``omniq db`` and OmniQ's own ``alembic.ini``, as a user would.
Also: a database migrated by an older OmniQ (its revision in
``alembic_version``) is adopted; an ``alembic_version`` holding the
application's revision is left alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq import AsyncOmniQ
from omniq.db import migrate
from omniq.db.coexist import LEGACY_VERSION_TABLE
from omniq.db.engine import create_engine
from omniq.db.migrate import VERSION_TABLE
from omniq.db.schema import metadata
from omniq.models import Settings
from tests.conftest import PostgresDatabases, require_postgres

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
OMNIQ_TABLES = set(metadata.tables)
APP_REVISION = "a1f0c0ffee01"


# --- helpers ---------------------------------------------------------------------------------


def _env(schema: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env.pop("PYTHONPATH", None)
    if schema is not None:
        env["OMNIQ_DB_SCHEMA"] = schema
    return env


def _run(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], ok: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if ok:
        assert proc.returncode == 0, (
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


async def _tables(url: str, schema: str | None = None) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names(schema=schema)))
    finally:
        await engine.dispose()


def tables(url: str, schema: str | None = None) -> set[str]:
    return asyncio.run(_tables(url, schema))


async def _versions(url: str, table: str, schema: str | None = None) -> list[str] | None:
    """The rows of version table ``table`` (None when the table does not exist)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            exists = await conn.run_sync(lambda c: sa.inspect(c).has_table(table, schema=schema))
            if not exists:
                return None
            version = sa.table(table, sa.column("version_num"), schema=schema)
            return list((await conn.execute(sa.select(version.c.version_num))).scalars())
    finally:
        await engine.dispose()


def versions(url: str, table: str, schema: str | None = None) -> list[str] | None:
    return asyncio.run(_versions(url, table, schema))


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> str:
    """A new, empty database (nothing migrated) on each engine."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    return require_postgres(postgres_databases).create(migrated=False)


# --- the sample application ------------------------------------------------------------------


def readme_recipe() -> str:
    """The README's ``include_object`` block, as the user copies it into env.py."""
    text = README.read_text(encoding="utf-8")
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def include_object" in b
    ]
    assert len(blocks) == 1, "the README shows one include_object recipe"
    return blocks[0]


APP_ENV = """
import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config
app_metadata = sa.MetaData()
sa.Table(
    "app_orders",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer", sa.String(100), nullable=False),
    sa.Index("ix_app_orders_customer", "customer"),
)

# --- the README's recipe, verbatim ---
{recipe}
# --- end of the recipe ---

RECIPE = context.get_x_argument(as_dictionary=True).get("recipe", "exclude")
if RECIPE == "exclude":  # the README's include_object: OmniQ's tables are OmniQ's
    options = dict(target_metadata=app_metadata, include_object=include_object)
elif RECIPE == "include":  # OmniQ's metadata beside ours; its version table skipped
    options = dict(
        target_metadata=[app_metadata, omniq_metadata],
        include_object=lambda obj, name, type_, *rest: not (
            type_ == "table" and name == VERSION_TABLE
        ),
    )
else:  # no recipe at all
    options = dict(target_metadata=app_metadata)


def do_run_migrations(connection):
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {{}}),
        prefix="sqlalchemy.",
        poolclass=sa.pool.NullPool,
    )
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(run_async_migrations())
"""

APP_REVISION_FILE = f'''
"""create app_orders"""
import sqlalchemy as sa
from alembic import op

revision = "{APP_REVISION}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "app_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer", sa.String(100), nullable=False),
    )
    op.create_index("ix_app_orders_customer", "app_orders", ["customer"])


def downgrade():
    op.drop_index("ix_app_orders_customer", table_name="app_orders")
    op.drop_table("app_orders")
'''


class SampleApp:
    """The application's Alembic environment in ``root``, on database ``url``."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        (root / "app_migrations" / "versions").mkdir(parents=True)
        (root / "alembic.ini").write_text(
            "[alembic]\n"
            "script_location = %(here)s/app_migrations\n"
            "path_separator = os\n"
            f"sqlalchemy.url = {url.replace('%', '%%')}\n",
            encoding="utf-8",
        )
        (root / "app_migrations" / "env.py").write_text(
            APP_ENV.format(recipe=readme_recipe()), encoding="utf-8"
        )
        (root / "app_migrations" / "versions" / f"{APP_REVISION}_orders.py").write_text(
            APP_REVISION_FILE, encoding="utf-8"
        )

    def alembic(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            [sys.executable, "-m", "alembic", "-c", str(self.root / "alembic.ini"), *args],
            cwd=self.root,
            env=_env(),
            ok=ok,
        )


class OmniQSide:
    """OmniQ's migrations on ``url``: the ``omniq`` command and OmniQ's ``alembic.ini``."""

    def __init__(self, cwd: Path, url: str, schema: str | None = None) -> None:
        self.cwd, self.url, self.schema = cwd, url, schema

    def omniq(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            [sys.executable, "-m", "omniq", *args, "--url", self.url],
            cwd=self.cwd,
            env=_env(self.schema),
            ok=ok,
        )

    def alembic(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            [
                sys.executable,
                *("-m", "alembic", "-c", str(REPO / "alembic.ini"), "-x", f"url={self.url}"),
                *args,
            ],
            cwd=self.cwd,
            env=_env(self.schema),
            ok=ok,
        )

    def upgrade(self) -> None:
        self.omniq("db", "upgrade")

    def downgrade(self) -> None:
        self.alembic("downgrade", "base")

    def assert_clean(self) -> None:
        self.omniq("db", "check")
        assert "No new upgrade operations detected" in self.alembic("check").stdout


def _assert_app_clean(app: SampleApp) -> None:
    out = app.alembic("check")
    assert "No new upgrade operations detected" in out.stdout + out.stderr


@pytest.mark.parametrize("omniq_first", [True, False], ids=["omniq-first", "app-first"])
def test_app_alembic_and_omniq_side_by_side(
    fresh_url: str, tmp_path: Path, omniq_first: bool
) -> None:
    app = SampleApp(tmp_path / "app", fresh_url)
    oq = OmniQSide(tmp_path, fresh_url)

    # Upgrade both, in this order.
    steps = [oq.upgrade, lambda: app.alembic("upgrade", "head")]
    for step in steps if omniq_first else reversed(steps):
        step()
    assert tables(fresh_url) >= OMNIQ_TABLES | {"app_orders", VERSION_TABLE, LEGACY_VERSION_TABLE}
    assert versions(fresh_url, LEGACY_VERSION_TABLE) == [APP_REVISION]
    assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]

    # Each side's check is clean: neither proposes anything about the other's tables.
    _assert_app_clean(app)
    oq.assert_clean()
    assert "head" in app.alembic("current").stdout
    # Without the README's recipe the application's autogenerate would drop OmniQ's tables.
    bare = app.alembic("-x", "recipe=none", "check", ok=False)
    assert bare.returncode != 0
    assert "omniq_tasks" in bare.stdout + bare.stderr
    # With OmniQ's metadata included beside the application's, it is clean too.
    _assert_app_clean_include(app)

    # Downgrade both, in the same order: each leaves the other's tables and revision alone.
    if omniq_first:
        oq.downgrade()
        assert OMNIQ_TABLES.isdisjoint(tables(fresh_url))
        assert "app_orders" in tables(fresh_url)
        assert versions(fresh_url, LEGACY_VERSION_TABLE) == [APP_REVISION]
        _assert_app_clean(app)
        app.alembic("downgrade", "base")
    else:
        app.alembic("downgrade", "base")
        assert "app_orders" not in tables(fresh_url)
        assert tables(fresh_url) >= OMNIQ_TABLES
        assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]
        oq.assert_clean()
        oq.downgrade()
    assert "app_orders" not in tables(fresh_url)
    assert OMNIQ_TABLES.isdisjoint(tables(fresh_url))
    assert versions(fresh_url, LEGACY_VERSION_TABLE) == []
    assert versions(fresh_url, VERSION_TABLE) == []

    # And up again in the other order: a round trip leaves both clean.
    for step in reversed(steps) if omniq_first else steps:
        step()
    _assert_app_clean(app)
    oq.assert_clean()


def _assert_app_clean_include(app: SampleApp) -> None:
    out = app.alembic("-x", "recipe=include", "check")
    assert "No new upgrade operations detected" in out.stdout + out.stderr


def test_app_alembic_beside_omniq_in_its_own_schema(
    tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> None:
    """PostgreSQL, ``OMNIQ_DB_SCHEMA``: the application's public schema holds only its tables."""
    url = require_postgres(postgres_databases).create(migrated=False)
    app = SampleApp(tmp_path / "app", url)
    oq = OmniQSide(tmp_path, url, schema="omniq_side")
    app.alembic("upgrade", "head")
    oq.upgrade()
    assert tables(url) == {"app_orders", LEGACY_VERSION_TABLE}
    assert tables(url, "omniq_side") == OMNIQ_TABLES | {VERSION_TABLE}
    assert versions(url, VERSION_TABLE, "omniq_side") == [migrate.head()]
    _assert_app_clean(app)
    assert app.alembic("-x", "recipe=none", "check").returncode == 0  # nothing to hide
    oq.assert_clean()
    app.alembic("downgrade", "base")
    oq.assert_clean()
    oq.downgrade()
    assert tables(url, "omniq_side") == {VERSION_TABLE}
    assert tables(url) == {LEGACY_VERSION_TABLE}


# --- adopting a database migrated by an older OmniQ ------------------------------------------


async def _make_legacy(url: str, revision: str) -> None:
    """The database as an older OmniQ left it: at ``revision``, recorded in alembic_version."""
    engine = create_engine(url)
    try:
        await migrate.upgrade_async(engine, revision)

        def move(conn: sa.Connection) -> None:
            conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
            # Alembic's default version table, as the old env.py created it.
            MigrationContext.configure(conn).stamp(_script(), revision)

        async with engine.begin() as conn:
            await conn.run_sync(move)
    finally:
        await engine.dispose()


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(resources.files("omniq._migrations")))
    return ScriptDirectory.from_config(config)


def make_legacy(url: str, revision: str) -> None:
    asyncio.run(_make_legacy(url, revision))
    assert versions(url, LEGACY_VERSION_TABLE) == [revision]
    assert versions(url, VERSION_TABLE) is None


@pytest.mark.anyio
async def test_opening_an_old_database_adopts_its_revision(fresh_url: str) -> None:
    await asyncio.to_thread(make_legacy, fresh_url, migrate.head())
    # auto_migrate off (PostgreSQL's default): only adoption can make this open work.
    async with AsyncOmniQ("legacy", url=fresh_url, settings=Settings(auto_migrate=False)) as oq:
        task_id = await oq.enqueue_async("tests.worker_tasks:add_sync", [1, 2])
        assert (await oq.get_task_async(task_id)).id == task_id
    assert await _versions(fresh_url, VERSION_TABLE) == [migrate.head()]
    assert await _versions(fresh_url, LEGACY_VERSION_TABLE) is None
    engine = create_engine(fresh_url)
    try:
        assert await migrate.diff_async(engine) == []
    finally:
        await engine.dispose()


def test_omniq_db_upgrade_adopts_an_old_database_behind_head(
    fresh_url: str, tmp_path: Path
) -> None:
    make_legacy(fresh_url, "0005")
    oq = OmniQSide(tmp_path, fresh_url)
    out = oq.omniq("db", "current", "--json").stdout
    assert '"current": "0005"' in out
    assert versions(fresh_url, VERSION_TABLE) == ["0005"]
    oq.upgrade()
    assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]
    assert versions(fresh_url, LEGACY_VERSION_TABLE) is None
    oq.assert_clean()


def test_omniq_alembic_ini_upgrade_adopts_an_old_database(fresh_url: str, tmp_path: Path) -> None:
    make_legacy(fresh_url, "0007")
    oq = OmniQSide(tmp_path, fresh_url)
    oq.alembic("upgrade", "head")
    assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]
    assert versions(fresh_url, LEGACY_VERSION_TABLE) is None
    oq.assert_clean()


def test_an_alembic_version_of_the_application_is_left_alone(
    fresh_url: str, tmp_path: Path
) -> None:
    app = SampleApp(tmp_path / "app", fresh_url)
    app.alembic("upgrade", "head")
    oq = OmniQSide(tmp_path, fresh_url)
    assert '"current": null' in oq.omniq("db", "current", "--json").stdout
    assert versions(fresh_url, VERSION_TABLE) is None  # nothing adopted, nothing created
    oq.upgrade()
    assert versions(fresh_url, LEGACY_VERSION_TABLE) == [APP_REVISION]
    assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]
    assert tables(fresh_url) >= OMNIQ_TABLES | {"app_orders"}
    _assert_app_clean(app)
    oq.assert_clean()


def test_an_application_numbering_revisions_like_omniq_is_left_alone(
    fresh_url: str, tmp_path: Path
) -> None:
    # The application's own revision "0003" looks like one of OmniQ's, but no
    # OmniQ table is there: it is the application's, and stays where it is.
    async def stamp() -> None:
        engine = create_engine(fresh_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(
                    lambda c: MigrationContext.configure(c).stamp(_script(), "0003")
                )
                await conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        finally:
            await engine.dispose()

    asyncio.run(stamp())
    oq = OmniQSide(tmp_path, fresh_url)
    oq.upgrade()
    assert versions(fresh_url, LEGACY_VERSION_TABLE) == ["0003"]
    assert versions(fresh_url, VERSION_TABLE) == [migrate.head()]


def test_two_processes_adopting_at_once_on_postgres(
    postgres_databases: PostgresDatabases | None,
) -> None:
    url = require_postgres(postgres_databases).create(migrated=False)
    make_legacy(url, migrate.head())

    async def race() -> list[str | None]:
        engines: list[AsyncEngine] = [create_engine(url) for _ in range(4)]
        try:
            return list(await asyncio.gather(*(migrate.current_async(e) for e in engines)))
        finally:
            for engine in engines:
                await engine.dispose()

    assert asyncio.run(race()) == [migrate.head()] * 4
    assert versions(url, VERSION_TABLE) == [migrate.head()]
    assert versions(url, LEGACY_VERSION_TABLE) is None
