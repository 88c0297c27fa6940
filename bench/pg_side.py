"""10: PostgreSQL rows, run only when a server is given; else printed as skipped.

``OMNIQ_BENCH_POSTGRES_URL`` (else ``OMNIQ_TEST_POSTGRES_URL``), e.g.
``postgresql+asyncpg://postgres@127.0.0.1/test``, names the server and a
database to connect to for administration. Every measurement creates a
database of its own (``CREATE DATABASE``, migrated with
:func:`omniq.db.migrate.upgrade`), fills it with OmniQ (untimed), measures,
reads the server's counters for it (``pg_stat_database``) and drops it.

- 10a: one default worker process drains ``Sizes.pg_tasks`` no-op tasks, as
  row 5 on SQLite; beside it, plain asyncpg doing the same claim/complete
  work with the same event and result rows (bench/raw_asyncpg.py).
- 10b: four worker processes vs one on tasks that log each execution, as
  row 6 (exactly-once checked).
- 10c/10d: the asyncpg floor with events vs without; with 4 connections vs 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import sqlalchemy as sa

from bench import omniq_side, raw_asyncpg
from bench.common import Row, fmt_rate, skipped_row, verdict
from bench.tasks import RECORD_DIR_ENV
from bench.workers import client_profile, executions, run_omniq_workers, span_rate
from bench.workspace import Sizes, Workspace
from omniq.db import migrate

URL_ENVS = ("OMNIQ_BENCH_POSTGRES_URL", "OMNIQ_TEST_POSTGRES_URL")
LABELS = (
    "10a. PG burn-down, 1 worker process",
    "10b. PG 4 worker processes vs 1",
    "10c. PG raw asyncpg, events vs bare",
    "10d. PG raw asyncpg, 4 conns vs 1",
)
#: The rate one OmniQ worker process should reach on PostgreSQL (tasks/s).
TARGET_RATE = 5_000
_STATS = (
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "session_time",
    "active_time",
    "idle_in_transaction_time",
    "sessions",
)


def base_url() -> str | None:
    """The PostgreSQL URL given in the environment, if any."""
    for name in URL_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class Server:
    """Throwaway databases on one PostgreSQL server: created, migrated, measured, dropped."""

    def __init__(self, base: str) -> None:
        self.base = sa.make_url(base)

    def omniq_url(self, name: str) -> str:
        """OmniQ's URL of database ``name``."""
        url = self.base.set(drivername="postgresql+asyncpg", database=name)
        return url.render_as_string(hide_password=False)

    def dsn(self, name: str | None = None) -> str:
        """asyncpg's DSN of database ``name`` (default: the administration database)."""
        url = self.base.set(drivername="postgresql")
        if name is not None:
            url = url.set(database=name)
        return url.render_as_string(hide_password=False)

    def _admin(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn())
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    @contextlib.contextmanager
    def database(self, stem: str) -> Iterator[str]:
        """A new database at OmniQ's head schema (its name), dropped afterwards."""
        name = f"omniq_bench_{stem}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}"')
        try:
            migrate.upgrade(self.omniq_url(name))
            yield name
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stats(self, name: str) -> dict[str, float]:
        """The server's counters of database ``name`` once no session is left on it."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = self._admin("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
            if rows[0][0] == 0:
                break
            time.sleep(0.05)
        rows = self._admin(
            f"SELECT {', '.join(_STATS)} FROM pg_stat_database WHERE datname = $1", name
        )
        return {key: float(rows[0][key] or 0) for key in _STATS} if rows else {}


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after}


def _omniq_run(
    server: Server, ws: Workspace, n: int, processes: int, *, record: bool
) -> dict[str, Any]:
    """One run of ``processes`` worker processes on a fresh database."""
    func = "bench.tasks:record" if record else omniq_side.NOOP
    env: dict[str, str] = {}
    record_dir = None
    if record:
        record_dir = ws.directory(f"pg-exec{processes}")
        env[RECORD_DIR_ENV] = str(record_dir)
    with server.database(f"w{processes}") as name:
        url = server.omniq_url(name)
        asyncio.run(omniq_side.fill(url, n, func))
        before = server.stats(name)
        extra = () if record else ("--trace-sql",)
        reports = run_omniq_workers(url, processes, ws.root, extra=extra, env=env)
        server_delta = _delta(before, server.stats(name))
    done, tasks_per_s = span_rate(reports)
    if done != n:
        raise RuntimeError(f"{processes} PostgreSQL workers completed {done} of {n} tasks")
    executed = executions(record_dir) if record_dir is not None else []
    return {
        "rate": tasks_per_s,
        "report": reports[0],
        "server": server_delta,
        "runs": len(executed),
        "distinct": len(set(executed)),
    }


def _raw_run(server: Server, n: int, *, events: bool, connections: int) -> float:
    with server.database("raw") as name:
        asyncio.run(omniq_side.fill(server.omniq_url(name), n))
        return asyncio.run(
            raw_asyncpg.drain_rate(server.dsn(name), n, events=events, connections=connections)
        )


def where_time_goes(report: dict[str, Any], server: dict[str, float], n: int) -> str:
    """The worker's profile (see :func:`client_profile`) and the server's view of the run."""
    parts = [client_profile(report, n)]
    first, last = report.get("first_claim"), report.get("last_complete")
    span = float(last) - float(first) if first is not None and last is not None else 0.0
    if server and span > 0:
        parts.append(
            f"the server counted {server['xact_commit'] * 100 / n:.2g} commits per 100 tasks "
            f"and, over the process's {server['sessions']:.0f} sessions (whole life, start-up "
            f"included), {server['active_time'] / 1000:.2f} s executing statements and "
            f"{server['idle_in_transaction_time'] / 1000:.2f} s idle inside transactions "
            f"waiting for the client, against a {span:.2f} s span"
        )
    text = "; ".join(p for p in parts if p)
    return f"Where the time goes: {text}." if text else ""


def bench_postgres(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Rows 10a-10d, or the same rows marked skipped without a server."""
    base = base_url()
    if base is None:
        reason = (
            f"set {URL_ENVS[0]} (or {URL_ENVS[1]}) to a PostgreSQL URL, e.g. "
            "postgresql+asyncpg://postgres@127.0.0.1/test"
        )
        return [skipped_row(label, reason) for label in LABELS]
    server = Server(base)
    n = sizes.pg_tasks
    best = dict.fromkeys(("burn", "one", "four", "raw", "bare", "raw4"), 0.0)
    burn: dict[str, Any] = {}
    exact = True
    counts = "?"
    for _ in range(sizes.process_repeats):
        run = _omniq_run(server, ws, n, 1, record=False)
        if run["rate"] > best["burn"]:
            best["burn"], burn = run["rate"], run
        for processes, key in ((1, "one"), (4, "four")):
            run = _omniq_run(server, ws, n, processes, record=True)
            best[key] = max(best[key], run["rate"])
            exact = exact and run["runs"] == n and run["distinct"] == n
            if processes == 4:
                counts = f"{run['runs']:,} runs of {run['distinct']:,} ids"
        best["raw"] = max(best["raw"], _raw_run(server, n, events=True, connections=1))
        best["bare"] = max(best["bare"], _raw_run(server, n, events=False, connections=1))
        best["raw4"] = max(best["raw4"], _raw_run(server, n, events=True, connections=4))

    def ratio(a: str, b: str) -> float:
        return best[a] / best[b] if best[b] else 0.0

    ok_burn = best["burn"] >= TARGET_RATE
    ok_four = ratio("four", "one") > 1.0 and exact
    where = where_time_goes(burn.get("report", {}), burn.get("server", {}), n)
    return [
        Row(
            LABELS[0],
            fmt_rate(best["burn"]),
            fmt_rate(best["raw"]),
            ratio("burn", "raw"),
            f"{verdict(ok_burn)} >= {TARGET_RATE:,}/s",
            ok_burn,
            f"{n:,} pre-enqueued sync no-op tasks drained by one worker process on a fresh "
            "PostgreSQL database (worker as in 5, asyncpg, default pool) vs plain asyncpg on "
            "one connection doing the claim/complete work with the same event and result "
            f"rows (10c). {where}",
        ),
        Row(
            LABELS[1],
            fmt_rate(best["four"]),
            fmt_rate(best["one"]),
            ratio("four", "one"),
            f"{verdict(ok_four)} > 1x, 0 double runs",
            ok_four,
            f"{n:,} tasks that append their id to a per-process file, drained by 4 worker "
            f"processes vs 1 (each on a fresh database); executions counted exactly ({counts}, "
            f"{'no double or missed runs' if exact else 'DOUBLE OR MISSED RUNS'}). The asyncpg "
            f"floor scales {ratio('raw4', 'raw'):.2f}x from 1 to 4 connections here (10d).",
        ),
        Row(
            LABELS[2],
            fmt_rate(best["raw"]),
            fmt_rate(best["bare"]),
            ratio("raw", "bare"),
            "ref",
            None,
            f"Plain asyncpg on one connection draining {n:,} tasks in batches of 100: claim "
            "(UPDATE ... WHERE id IN (SELECT ... ORDER BY ... LIMIT 100 FOR UPDATE SKIP "
            "LOCKED) RETURNING *) + a dequeued event per task in one transaction, then one "
            "conditional UPDATE completing the batch + executing/completed events + result "
            "upserts in another, vs the two UPDATEs alone (autocommit, no events or results). "
            "No task code runs: the database's part only.",
        ),
        Row(
            LABELS[3],
            fmt_rate(best["raw4"]),
            fmt_rate(best["raw"]),
            ratio("raw4", "raw"),
            "ref",
            None,
            "The asyncpg floor with events (10c) on 4 connections at once (one process, "
            "asyncio) vs 1: what SKIP LOCKED claims on this server give with more claimers.",
        ),
    ]
