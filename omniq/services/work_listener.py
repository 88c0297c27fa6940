"""PostgreSQL: one connection that LISTENs for new work, re-established when lost.

The tasks table's triggers (revision 0004) send ``NOTIFY omniq_work`` when a
statement makes tasks pending. A worker holds one connection of its own
(outside the pool) that LISTENs on that channel and wakes the process's
waiters. A server restart or a dropped connection ends the LISTEN without
a word; the listener notices (asyncpg's termination callback, and a check
every few seconds), logs a warning, and connects again with backoff.
Meanwhile, and whenever LISTEN cannot be had, polling (always on) finds the
work; once listening again it wakes the waiters, since work may have come
while it was deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["WORK_CHANNEL", "WorkListener"]

log = logging.getLogger("omniq.listen")

#: The channel revision 0004's triggers notify.
WORK_CHANNEL = "omniq_work"


class WorkListener:
    """LISTEN on :data:`WORK_CHANNEL` and call ``on_work`` for each notification."""

    def __init__(
        self,
        url: sa.URL,
        on_work: Callable[[], None],
        *,
        connect_args: Mapping[str, Any] | None = None,
        check_every: float = 5.0,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        probe_timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._on_work = on_work
        #: The driver's arguments (the server timeouts of the app's own engine).
        self._connect_args = dict(connect_args or {})
        self._check_every = check_every
        self._retry_min, self._retry_max = retry_min, retry_max
        #: How long the liveness probe and a closing may wait for the server.
        self._probe_timeout = probe_timeout
        self._engine: AsyncEngine | None = None
        self._listen_conn: AsyncConnection | None = None
        self._driver: Any = None
        self._lost = asyncio.Event()
        #: How many times a LISTEN was established.
        self.connects = 0
        #: Set when the listening ends: :meth:`run` returns at its next turn (should
        #: its cancellation have been lost).
        self.stopping = False

    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._driver is not None and not self._driver.is_closed()

    async def open(self) -> bool:
        """Try to LISTEN once; True on success (a failure is logged as a warning)."""
        try:
            await self._connect()
        except Exception as exc:
            log.warning("cannot LISTEN for new work (workers poll instead): %s", exc)
            await self._drop()
            return False
        return True

    async def run(self) -> None:
        """Keep the LISTEN up until cancelled: reconnect (with backoff) whenever it is lost."""
        delay = self._retry_min
        while not self.stopping:
            if self.listening():
                self._lost.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), self._check_every)
                # A connection a NAT or load balancer dropped without a word looks
                # open for good: a query must come back for it to count as alive.
                if self.listening() and await self._answers():
                    continue
                log.warning("the LISTEN connection was lost; workers poll until it is back")
                await self._drop()
            try:
                await self._connect()
            except Exception as exc:
                log.debug("LISTEN again failed (next try in %.1f s): %s", delay, exc)
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_min
            log.info("listening for new work again")
            self._on_work()  # work may have been made while nobody listened

    async def close(self) -> None:
        """Stop listening and close the connection (a server that does not answer
        holds this for a probe timeout at most, not a whole server timeout)."""
        driver = self._driver
        if driver is not None and not driver.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    driver.remove_listener(WORK_CHANNEL, self._notified), self._probe_timeout
                )
        await self._drop()

    async def _answers(self) -> bool:
        """True if the LISTEN connection answers a query within the probe timeout."""
        driver = self._driver
        try:
            await asyncio.wait_for(driver.fetchval("SELECT 1"), self._probe_timeout)
        except Exception:
            return False
        return True

    async def _connect(self) -> None:
        if self._engine is None:
            self._engine = create_async_engine(
                self._url, poolclass=sa.pool.NullPool, connect_args=self._connect_args
            )
        self._listen_conn = await self._engine.connect()
        driver: Any = (await self._listen_conn.get_raw_connection()).driver_connection
        self._driver = driver
        driver.add_termination_listener(self._terminated)
        await driver.add_listener(WORK_CHANNEL, self._notified)
        self.connects += 1

    async def _drop(self) -> None:
        """Forget the current connection (closing it if it still can be)."""
        conn, self._listen_conn = self._listen_conn, None
        driver, self._driver = self._driver, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self._probe_timeout)
            except Exception:
                if driver is not None:
                    driver.terminate()  # no answer: the socket is closed without one
        engine, self._engine = self._engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(engine.dispose(), self._probe_timeout)

    def _notified(self, *_: Any) -> None:
        # asyncpg calls this on the loop that owns the listening connection.
        self._on_work()

    def _terminated(self, *_: Any) -> None:
        self._lost.set()
