"""Benchmark sizes (full, quick and smoke) and the temporary workspace of database files."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import omniq_side, raw_sqlite
from bench.common import sqlite_url
from omniq.services import Services


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    repeats: int
    process_repeats: int
    enqueue_many: int
    huey_enqueue: int
    huey_default_enqueue: int
    single: int
    producers: int
    per_producer: int
    claim_backlog: int
    claim_small: int
    claim_per_run: int
    burn: int
    multi: int
    latency: int
    rss_low: int
    rss_high: int
    #: Tasks per run of the failing / refused / no-op comparison (9).
    failing: int
    #: Tasks per PostgreSQL run (10), one worker or four.
    pg_tasks: int
    #: Rows of the table the dashboard's task list pages through (11).
    dashboard_tasks: int


FULL = Sizes(
    repeats=3,
    process_repeats=3,
    enqueue_many=20_000,
    huey_enqueue=10_000,
    huey_default_enqueue=2_000,
    single=2_000,
    producers=100,
    per_producer=50,
    claim_backlog=100_000,
    claim_small=1_000,
    claim_per_run=5_000,
    burn=10_000,
    multi=5_000,
    latency=200,
    rss_low=10_000,
    rss_high=100_000,
    failing=2_000,
    pg_tasks=5_000,
    dashboard_tasks=1_000_000,
)
QUICK = Sizes(
    repeats=1,
    process_repeats=1,
    enqueue_many=3_000,
    huey_enqueue=2_000,
    huey_default_enqueue=300,
    single=300,
    producers=100,
    per_producer=10,
    claim_backlog=20_000,
    claim_small=1_000,
    claim_per_run=2_000,
    burn=2_000,
    multi=2_000,
    latency=40,
    rss_low=5_000,
    rss_high=20_000,
    failing=2_000,
    pg_tasks=5_000,
    dashboard_tasks=20_000,
)


#: The test suite's size (tests/acceptance/test_bench_smoke.py): every row runs and
#: prints, in seconds; its figures are too small to mean anything.
SMOKE = Sizes(
    repeats=1,
    process_repeats=1,
    enqueue_many=500,
    huey_enqueue=300,
    huey_default_enqueue=100,
    single=100,
    producers=20,
    per_producer=5,
    claim_backlog=2_000,
    claim_small=200,
    claim_per_run=200,
    burn=300,
    multi=300,
    latency=10,
    rss_low=500,
    rss_high=2_000,
    failing=200,
    pg_tasks=300,
    dashboard_tasks=2_000,
)


class Workspace:
    """A temporary directory of database files, removed at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="omniq-bench-"))
        self._serial = 0
        self.schema = self.root / "schema.db"
        self.template = self._make_schema_and_template()

    def _make_schema_and_template(self) -> raw_sqlite.Template:
        async def build() -> None:
            services = await Services.open_async(sqlite_url(self.schema))
            await services.close_async()
            sample = self.root / "sample.db"
            shutil.copyfile(self.schema, sample)
            await omniq_side.fill(sample, 1)

        asyncio.run(build())
        conn = sqlite3.connect(self.schema)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return raw_sqlite.template_rows(self.root / "sample.db")

    def _next(self, stem: str, suffix: str = ".db") -> Path:
        self._serial += 1
        return self.root / f"{stem}-{self._serial}{suffix}"

    def omniq_db(self, stem: str) -> Path:
        """A new database file with OmniQ's schema at head and no rows."""
        path = self._next(stem)
        shutil.copyfile(self.schema, path)
        path.chmod(0o600)
        return path

    def huey_db(self, stem: str) -> Path:
        """A path for a new Huey database (not created yet)."""
        return self._next(f"huey-{stem}")

    def directory(self, stem: str) -> Path:
        """A new empty directory."""
        path = self._next(stem, "")
        path.mkdir()
        return path

    def cleanup(self) -> None:
        """Remove everything."""
        shutil.rmtree(self.root, ignore_errors=True)
