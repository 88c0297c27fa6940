"""The one mechanism behind every sync API: an event loop in a background thread.

Sync methods hand their coroutine to a process-wide anyio BlockingPortal and
block until it finishes. Calling a sync method from inside a running event
loop raises :class:`SyncInAsyncContext` instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from omniq.errors import DatabaseClosed, SyncInAsyncContext

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_portal_cm: AbstractContextManager[BlockingPortal] | None = None
_portal_pid: int | None = None
_portal_loop: asyncio.AbstractEventLoop | None = None


def portal() -> BlockingPortal:
    """The process-wide portal (started on first use, again after a fork)."""
    global _portal, _portal_cm, _portal_pid, _portal_loop
    with _lock:
        if _portal is None or _portal_pid != os.getpid():
            _portal_cm = start_blocking_portal("asyncio")
            _portal = _portal_cm.__enter__()
            _portal_pid = os.getpid()
            _portal_loop = _portal.call(asyncio.get_running_loop)
        return _portal


class OwnedElsewhere(Exception):
    """Raised by a call running on the portal's loop before it did anything, when the
    objects it needs belong to ``loop``, another running loop: :func:`run_sync_on`
    then makes the call again on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__("owned by another event loop")
        self.loop = loop


def handed_over(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``method``, made again on the owning loop when it raises :class:`OwnedElsewhere`.

    For an async caller on one event loop using objects another running loop
    owns (an app opened on PostgreSQL in one thread's loop, called from
    another's): the call runs on the owner's loop and this loop awaits its
    outcome (cancelling the wait cancels the call there).
    """

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except OwnedElsewhere as moved:
            return await made_on(moved.loop, method, *args, **kwargs)

    return call


async def made_on(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[P, Awaitable[R]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Await ``fn(*args, **kwargs)`` made on ``loop`` (another running loop).

    Should that loop end before the call began (its ``asyncio.run`` returned,
    cancelling what was left), the call is made on this loop instead; should
    it end while the call ran, :class:`DatabaseClosed` says so instead of a
    bare cancellation.
    """

    started = threading.Event()

    async def run() -> R:
        started.set()
        return await fn(*args, **kwargs)

    coro = run()
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # that loop is closed already
        coro.close()
        return await fn(*args, **kwargs)
    wrapped = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=_LOOK)
            if done:
                return wrapped.result()
            if loop.is_closed():
                # It ended without running (or finishing) the call: a call handed
                # over while it was ending is dropped with it, unresolved.
                future.cancel()
                break
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            future.cancel()
            raise  # this caller was cancelled
        # Cancelled there: only that loop's ending (asyncio.run cancels what is
        # left) does so, as nobody else holds the call.
    if started.is_set():
        raise _loop_ended(fn)
    # That loop ended before the call began (it was busy, then its asyncio.run
    # returned): nothing was done, so it is made here after all.
    coro.close()
    return await fn(*args, **kwargs)


#: How often a call handed to another loop looks whether that loop has ended.
_LOOK = 0.25


def _loop_ended(fn: object) -> DatabaseClosed:
    return DatabaseClosed(
        f"{getattr(fn, '__qualname__', fn)!s}: the event loop that owned the connections "
        "ended before the call was done; call it again"
    )


def is_portal_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True if ``loop`` is the event loop of this process's running portal."""
    return loop is not None and loop is _portal_loop and _portal_pid == os.getpid()


def _stop() -> None:
    global _portal, _portal_cm, _portal_loop
    with _lock:
        if _portal_cm is not None and _portal_pid == os.getpid():
            with contextlib.suppress(Exception):  # pragma: no cover - interpreter shutdown
                _portal_cm.__exit__(None, None, None)
        _portal = _portal_cm = None
        _portal_loop = None


atexit.register(_stop)


def run_sync(fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` on the portal's loop and wait for its result."""
    return run_sync_on(None, fn, *args, **kwargs)


def run_sync_on(
    loop: asyncio.AbstractEventLoop | None,
    fn: Callable[P, Awaitable[R]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run ``fn(*args, **kwargs)`` on ``loop`` (else the portal's) and wait for its result.

    Objects bound to an event loop (its connections, locks, futures) are only
    touched from that loop: a blocking call made in another thread is handed
    to the loop that owns them, while that loop runs.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SyncInAsyncContext(
            f"{getattr(fn, '__qualname__', fn)!s} is a blocking call and was made inside a "
            "running event loop; use the *_async method (await ...) instead"
        )

    async def call() -> R:
        try:
            return await fn(*args, **kwargs)
        except OwnedElsewhere as moved:
            # What the call needs was opened on another loop meanwhile (the app's
            # own, racing this thread): the whole call is made there instead.
            return await made_on(moved.loop, fn, *args, **kwargs)

    if loop is not None and loop.is_running() and not loop.is_closed():
        started = threading.Event()

        async def there() -> R:
            started.set()
            return await call()

        coro = there()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # that loop closed meanwhile
            coro.close()
            return portal().call(call)
        while not future.done():
            concurrent.futures.wait([future], timeout=_LOOK)
            if not future.done() and loop.is_closed():
                future.cancel()  # dropped, unresolved, with that loop
                break
        if not future.cancelled():
            return future.result()
        # Cancelled there: only that loop's ending (asyncio.run cancels what is
        # left) does so, as nobody else holds the call. Begun, it may have done
        # part of its work; not begun, it is made on the portal instead.
        if started.is_set():
            raise _loop_ended(fn)
        coro.close()
    return portal().call(call)


def sync_twin(async_method: Callable[..., Awaitable[R]]) -> Callable[..., R]:
    """The sync twin of ``async_method``: same signature, runs through the portal.

    The twin calls the method of the same name on ``self._async``.
    """
    # Typed with ``...`` parameters: mypy cannot match ``Concatenate[Any, P]``
    # against methods with a named ``self`` and ``**kwargs``. ``functools.wraps``
    # keeps the async method's signature for ``inspect.signature`` and IDEs.
    name = async_method.__name__

    @functools.wraps(async_method)
    def method(self: Any, /, *args: Any, **kwargs: Any) -> R:
        bound: Callable[..., Awaitable[R]] = getattr(self._async, name)
        return run_sync(bound, *args, **kwargs)

    method.__name__ = name.removesuffix("_async")
    method.__qualname__ = method.__qualname__.replace(name, method.__name__)
    return method


async def run_in_portal(fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Await ``fn(*args, **kwargs)`` run on the portal's loop (from any other loop)."""

    async def call() -> R:
        return await fn(*args, **kwargs)

    return await asyncio.wrap_future(portal().start_task_soon(call))
