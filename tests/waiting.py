"""Waiting on a condition with a deadline: tests never sleep to "let things happen"."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

#: Generous: a condition that holds is seen within milliseconds.
DEADLINE = 30.0


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await anyio.sleep(0.02)


def wait_until_sync(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Blocking :func:`wait_until`: poll ``condition`` until it holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


async def waits_for_a_lock(watcher: AsyncConnection) -> bool:
    """True while a session of ``watcher``'s PostgreSQL database waits for a lock."""
    rows = await watcher.exec_driver_sql(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return bool(rows.scalar_one())
