"""Alembic migrations: programmatic API, the `alembic` CLI, and a wheel install."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from packaging.requirements import Requirement
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.db import migrate
from omniq.db.engine import create_engine
from omniq.db.schema import metadata
from omniq.errors import SchemaOutOfDate

REPO = Path(__file__).resolve().parents[2]
OMNIQ_TABLES = {table.name for table in metadata.sorted_tables}


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def _index_names(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        indexes = await conn.run_sync(lambda sync: sa.inspect(sync).get_indexes(table))
    return {index["name"] for index in indexes if index["name"]}


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMNIQ_DATABASE_URL", None)
    env.pop("PYTHONPATH", None)
    return env


def _run(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout + proc.stderr


# --- the programmatic API ---------------------------------------------------------------


@pytest.mark.anyio
async def test_upgrade_matches_metadata_and_downgrade_round_trips(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        assert await migrate.current_async(engine) is None
        assert OMNIQ_TABLES.isdisjoint(await _table_names(engine))

        await migrate.upgrade_async(engine)
        assert await migrate.current_async(engine) == migrate.head()
        assert await migrate.diff_async(engine) == []
        await migrate.check_async(engine)
        assert await _table_names(engine) >= OMNIQ_TABLES
        indexes = await _index_names(engine, "omniq_tasks")
        assert {"ix_omniq_tasks_claim", "ix_omniq_tasks_status_order"} <= indexes
        assert "uq_omniq_tasks_live_unique_key" in indexes

        # Upgrading again is a no-op.
        await migrate.upgrade_async(engine)
        assert await migrate.current_async(engine) == migrate.head()

        await migrate.downgrade_async(engine, "base")
        assert await migrate.current_async(engine) is None
        assert OMNIQ_TABLES.isdisjoint(await _table_names(engine))

        await migrate.upgrade_async(engine)
        assert await migrate.current_async(engine) == migrate.head()
        assert await migrate.diff_async(engine) == []
        assert await _table_names(engine) >= OMNIQ_TABLES
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_ensure_schema(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        with pytest.raises(SchemaOutOfDate) as info:
            await migrate.ensure_schema(engine, auto_migrate=False)
        assert info.value.current is None
        assert info.value.head == migrate.head()
        assert "upgrade" in str(info.value)
        assert OMNIQ_TABLES.isdisjoint(await _table_names(engine))  # nothing was created

        await migrate.ensure_schema(engine, auto_migrate=True)
        assert await migrate.current_async(engine) == migrate.head()
        assert await migrate.diff_async(engine) == []
        # At head: both modes are satisfied.
        await migrate.ensure_schema(engine, auto_migrate=False)
        await migrate.ensure_schema(engine, auto_migrate=True)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_check_reports_a_difference(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        await migrate.upgrade_async(engine)
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP INDEX ix_omniq_events_timestamp"))
        assert await migrate.diff_async(engine) != []
        with pytest.raises(SchemaOutOfDate):
            await migrate.check_async(engine)
    finally:
        await engine.dispose()


def test_sync_api(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}"
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
    migrate.check(url)
    migrate.downgrade(url)
    assert migrate.current(url) is None


def test_revisions_form_one_chain_from_0001() -> None:
    config = Config()
    config.set_main_option("script_location", str(resources.files("omniq._migrations")))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_bases() == ["0001"]
    assert scripts.get_heads() == [migrate.head()]
    chain = [rev.revision for rev in scripts.walk_revisions("base", "heads")]
    assert chain[-1] == "0001"
    assert chain[0] == migrate.head()


# --- the alembic CLI ------------------------------------------------------------------------


def test_alembic_cli_upgrade_then_check(empty_db_url: str) -> None:
    alembic = [sys.executable, "-m", "alembic", "-x", f"url={empty_db_url}"]
    _run([*alembic, "upgrade", "head"], cwd=REPO)
    out = _run([*alembic, "current"], cwd=REPO)
    assert migrate.head() in out
    out = _run([*alembic, "check"], cwd=REPO)
    assert "No new upgrade operations detected" in out
    assert migrate.current(empty_db_url) == migrate.head()
    _run([*alembic, "downgrade", "base"], cwd=REPO)
    assert migrate.current(empty_db_url) is None


def test_alembic_cli_script_from_the_venv(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("alembic")
    if not script.exists():
        pytest.fail(f"the alembic console script is missing next to {sys.executable}")
    url = f"sqlite+aiosqlite:///{tmp_path / 'script.db'}"
    _run([str(script), "-x", f"url={url}", "upgrade", "head"], cwd=REPO)
    _run([str(script), "-x", f"url={url}", "check"], cwd=REPO)


def test_alembic_cli_takes_url_from_environment(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    env = _clean_env()
    env["OMNIQ_DATABASE_URL"] = url
    _run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env)
    assert migrate.current(url) == migrate.head()


# --- the wheel ships its migrations ------------------------------------------------------------


def _copy_sources(dest: Path) -> None:
    """The files the wheel is built from (building in place would write into the checkout)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    dest.mkdir()
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    for name in ("README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "omniq", dest / "omniq", ignore=ignore)
    shutil.copytree(REPO / "migrations", dest / "migrations", ignore=ignore)


def _build_requirements_installed() -> bool:
    """True when this environment satisfies pyproject's build-system requirements."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for spec in pyproject["build-system"]["requires"]:
        requirement = Requirement(spec)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


UPGRADE_FROM_WHEEL = """
import sys
from pathlib import Path

import omniq
import omniq._migrations
from omniq.db import migrate

site = Path(sys.argv[2]).resolve()
locations = [Path(p).resolve() for p in omniq.__path__]  # omniq may be a namespace package
locations += [Path(m.__file__).resolve() for m in (migrate, omniq._migrations)]
for location in locations:
    assert site in location.parents, f"imported from {location}, not from the wheel"

migrate.upgrade(sys.argv[1])
print("revision", migrate.current(sys.argv[1]))
migrate.check(sys.argv[1])
"""


@pytest.mark.slow
def test_wheel_ships_migrations_and_upgrades_without_a_checkout(tmp_path: Path) -> None:
    src, dist, site, work = (tmp_path / name for name in ("src", "dist", "site", "work"))
    _copy_sources(src)
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    # Offline with the environment's setuptools when it satisfies build-system.requires;
    # otherwise pip builds in isolation and fetches them (as `pip install .` would).
    isolation = ["--no-build-isolation"] if _build_requirements_installed() else []
    _run([*pip, "wheel", "--no-deps", *isolation, "-w", str(dist), str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("omniq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "omniq/_migrations/versions/0001_initial.py" in names
    for revision in (REPO / "migrations" / "versions").glob("*.py"):
        assert f"omniq/_migrations/versions/{revision.name}" in names
    assert "omniq/_migrations/env.py" in names
    assert "omniq/_migrations/script.py.mako" in names
    assert "omniq/db/migrate.py" in names
    assert not any(name.startswith(("tests/", "migrations/")) for name in names)

    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=tmp_path)

    db = work / "data" / "omniq.db"
    url = f"sqlite+aiosqlite:///{db}"
    # No checkout on the path: cwd is elsewhere, and -S skips the .pth files (the
    # venv's editable install of this checkout); dependencies come from the venv.
    paths = sysconfig.get_paths()
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([str(site), paths["purelib"], paths["platlib"]])
    )
    out = _run(
        [sys.executable, "-S", "-c", UPGRADE_FROM_WHEEL, url, str(site)],
        cwd=work,
        env=env,
    )
    assert f"revision {migrate.head()}" in out
    assert db.exists()

    async def tables() -> set[str]:
        engine = create_engine(url)
        try:
            return await _table_names(engine)
        finally:
            await engine.dispose()

    import anyio

    assert anyio.run(tables) >= OMNIQ_TABLES
