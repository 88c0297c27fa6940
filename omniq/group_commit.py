"""Group commit: concurrent writers share one transaction, each returns after its commit."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from omniq.errors import DatabaseError

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Coalesces concurrent ``submit`` calls into batches written by ``flush``.

    ``flush(items)`` writes one batch in one transaction and returns one
    result per item, in order; ``submit`` returns its item's result.

    A background drain task (never a caller's own coroutine) writes the
    batches: while one batch is written, new items queue up for the next.
    Every caller returns only after the transaction holding its item
    committed. A caller that is cancelled stops waiting; its item is
    withdrawn if no batch took it yet, and the other callers are not
    affected. If a batch fails, its items are retried one by one so that one
    bad item fails only its own caller. Bound to the event loop it is first
    used on.
    """

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = 1000
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` in the next batch; return its result once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            # A context of its own: the batch is nobody's (e.g. not the first caller's trace).
            self._drainer = loop.create_task(self._drain(), context=contextvars.Context())
        return await future  # cancelling the caller cancels only its own future

    async def _drain(self) -> None:
        try:
            # Let the callers that become ready in this turn of the loop join (the sync
            # API's, from other threads, start their coroutines one turn later).
            await asyncio.sleep(0)
            while self._pending:
                batch = [(item, fut) for item, fut in self._pending[: self._max_batch]]
                del self._pending[: self._max_batch]
                batch = [(item, fut) for item, fut in batch if not fut.done()]
                if batch:
                    await self._write(batch)
        finally:
            # Settle whatever is left (the drain itself was cancelled: loop shutdown).
            leftover, self._pending = self._pending, []
            for _, future in leftover:
                _settle(future, error=RuntimeError("group commit stopped before writing"))

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        """Write one batch; settle every caller's future (errors isolated per item)."""
        try:
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, DatabaseError | OSError):
                    # The database refused the whole batch (busy, down, full): every
                    # caller gets the error now, not once per item after retries.
                    for _, future in batch:
                        _settle(future, error=exc)
                    return
                for item, future in batch:
                    if future.done():
                        continue  # its caller was cancelled
                    try:
                        (result,) = await self._flush([item])
                    except Exception as single:
                        _settle(future, error=single)
                    else:
                        _settle(future, result)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)
        except BaseException as exc:
            # Cancelled mid-write (loop shutdown): no caller is left waiting forever.
            for _, future in batch:
                _settle(future, error=exc if isinstance(exc, Exception) else None, cancel=True)
            raise


def _settle(
    future: asyncio.Future[R],
    result: R | None = None,
    *,
    error: BaseException | None = None,
    cancel: bool = False,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif cancel:
        future.cancel()
    else:
        future.set_result(result)  # type: ignore[arg-type]
