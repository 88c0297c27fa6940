"""Running a call on the event loop that owns it, from a scrape's thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["LoopUnavailable", "await_on", "call_on"]


class LoopUnavailable(RuntimeError):
    """The owning loop is this thread's own (a blocking wait would deadlock) or not running."""


def _foreign(loop: asyncio.AbstractEventLoop) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise LoopUnavailable(
            "called on the event loop that owns the database connections; "
            "await DatabaseCollector.read_async() there instead"
        )
    if loop.is_closed() or not loop.is_running():
        raise LoopUnavailable("the event loop that owns the database connections is not running")


def await_on(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[T]], timeout: float
) -> T:
    """Run ``make()`` on ``loop`` (another thread's) and wait at most ``timeout`` s for it."""
    _foreign(loop)

    async def run() -> T:
        return await make()

    future = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no answer within {timeout:g}s") from None


def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T], timeout: float) -> T:
    """``fn()`` on ``loop``: directly if this thread runs it or none does, else handed over."""
    if loop is None or loop.is_closed() or not loop.is_running():
        return fn()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return fn()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no answer within {timeout:g}s") from None
