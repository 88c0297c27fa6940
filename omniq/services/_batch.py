"""Group commit: concurrent writers share one transaction, each returns after its commit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Coalesces concurrent ``submit`` calls into batches written by ``flush``.

    While one batch is being written, new items queue up and go into the
    next batch. Every caller returns only after the transaction holding its
    item committed. If a batch fails, its items are retried one by one so
    that one bad item fails only its own caller.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], max_batch: int = 1000) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._busy = False

    async def submit(self, item: T) -> None:
        """Write ``item`` in the next batch; return once it is committed."""
        if self._busy:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._pending.append((item, future))
            await future
            return
        # Nobody is writing: lead. Let the callers that became ready in this
        # same turn of the event loop join (one yield), then write; whoever
        # queues up meanwhile is written by a background drain.
        self._busy = True
        try:
            leader: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.insert(0, (item, leader))
            await asyncio.sleep(0)
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._write(batch)
            await leader
        finally:
            if self._pending:
                self._drainer = asyncio.get_running_loop().create_task(self._drain())
            else:
                self._busy = False

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:
            self._busy = False

    async def _drain_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._write(batch)

    async def _write(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        """Write one batch; settle every caller's future (errors isolated per item)."""
        try:
            await self._flush([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            for item, future in batch:
                try:
                    await self._flush([item])
                except Exception as single:
                    _settle(future, error=single)
                else:
                    _settle(future)
        else:
            for _, future in batch:
                _settle(future)


def _settle(future: asyncio.Future[None], error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
