"""Hardening tests: safety, faults and fuzzing, on every engine they apply to.

Task functions live in ``tests/hardening/tasks.py`` (workers run them with
``allow_modules=["tests.hardening.tasks"]``); the helpers below are shared by
the test modules. Nothing sleeps to "let things happen": tests wait on a
condition with a deadline.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa

from omniq.db.engine import create_engine
from omniq.services import Services
from omniq.worker import Worker, WorkerStats
from tests import waiting

# Workers import "tests.hardening.tasks": the repository root must be importable.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

MODULE = "tests.hardening.tasks"
DEADLINE = 60.0  # generous: a condition that holds is seen within milliseconds


def ref(name: str) -> str:
    """The reference of a function in tests/hardening/tasks.py."""
    return f"{MODULE}:{name}"


#: :func:`tests.waiting.wait_until` with this package's deadline.
wait_until = functools.partial(waiting.wait_until, timeout=DEADLINE)


def make_worker(svc: Services, **options: Any) -> Worker:
    """A worker on ``svc`` allowed to run tests/hardening/tasks.py only."""
    options.setdefault("run_scheduler", False)
    options.setdefault("run_maintenance", False)
    options.setdefault("allow_modules", [MODULE])
    return Worker(svc.queue, svc.results, svc.events, **options)


async def drain(svc: Services, **options: Any) -> WorkerStats:
    """Run a burst worker on ``svc`` until nothing is ready (bounded by DEADLINE)."""
    with anyio.fail_after(DEADLINE):
        return await make_worker(svc, **options).run_until_complete_async()


async def execute(url: str, sql: str, params: Mapping[str, Any] | None = None) -> int:
    """Run one raw SQL write on its own engine (as a hand-written change would); rowcount."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(sql), dict(params or {}))
            return result.rowcount
    finally:
        await engine.dispose()


async def fetch(url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Rows of one raw SQL query on its own engine."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(sql), dict(params or {}))).all())
    finally:
        await engine.dispose()


async def count_tasks(url: str) -> int:
    """How many rows omniq_tasks holds."""
    rows = await fetch(url, "SELECT count(*) FROM omniq_tasks")
    return int(rows[0][0])
