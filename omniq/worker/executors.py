"""Running one task's function: on the event loop, in a thread, or in a process.

- Coroutine functions run on the event loop; a timeout or cancellation
  cancels them.
- Sync functions run in the worker's thread pool. A thread cannot be killed:
  on timeout the task is marked timed out and its eventual result is
  discarded, while the thread runs on until the function returns.
- With the process executor, sync functions run in a child process started
  from a clean fork server; a timeout or cancellation kills that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import select
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor as _FuturesExecutor
from concurrent.futures import Future
from typing import Any, Literal

from omniq.errors import ConfigurationError, SerializationError
from omniq.models.config import EXECUTOR_KINDS
from omniq.models.error import exception_text
from omniq.task_context import CurrentTask, _current

ExecutorKind = Literal["async", "thread", "process"]

__all__ = ["EXECUTOR_KINDS", "Executor", "ExecutorKind", "RemoteError"]


class RemoteError(Exception):
    """An exception raised by a task in a child process (type and traceback kept)."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = tb


def _child_main(
    ref: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    conn: multiprocessing.connection.Connection,
    worker_pid: int,
    task_info: tuple[str, int, str, str] | None = None,
    trace_context: dict[str, str] | None = None,
) -> None:
    _exit_with_worker(worker_pid)
    # The parent checked that ``ref`` is allowed before starting this process.
    from omniq.serialization import resolve_ref
    from omniq.worker.pipe_progress import PipeProgress

    progress = PipeProgress(conn)
    if task_info is not None:
        task_id, attempt, queue_name, func_ref = task_info
        _current.set(
            CurrentTask(
                id=task_id,
                attempt=attempt,
                queue=queue_name,
                function=func_ref,
                sink=progress.report,
            )
        )
    try:
        try:
            func = resolve_ref(ref)
            if trace_context is not None:
                from omniq._otel_spans import in_child_process

                result = in_child_process(trace_context, func, args, kwargs)
            else:
                result = func(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = asyncio.run(_await(result))
        finally:
            progress.close()  # the last report goes before the outcome
        try:
            outcome = pickle.dumps(("ok", result))
        except Exception as exc:
            raise SerializationError(
                f"the return value ({type(result).__qualname__}) cannot leave the worker "
                f"process (it must pickle): {exception_text(exc)}"
            ) from exc
        conn.send_bytes(outcome)  # what conn.recv() reads back
    except BaseException as exc:
        conn.send(("err", type(exc).__qualname__, exception_text(exc), traceback.format_exc()))
    finally:
        conn.close()


def _exit_with_worker(worker_pid: int) -> None:
    """Exit as soon as the worker process ends (even by SIGKILL), on Linux >= 5.3.

    Task processes are children of the fork server, not of the worker: without
    this, a killed worker leaves them running as orphans while their tasks are
    recovered and run again elsewhere.
    """
    try:
        fd = os.pidfd_open(worker_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="omniq-worker-watch", daemon=True).start()


async def _await(awaitable: Any) -> Any:
    return await awaitable


#: (loop future, succeeded, result or exception) of a call run through ``call_async``.
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class _PoolCall:
    """One task call in the pool: when it started and ended, and its timeout.

    A call may wait in the pool's queue for a free thread; its clock starts
    when it runs. One loop timer, re-armed while the call has not started or
    has time left; on expiry the call's future fails with TimeoutError.
    """

    __slots__ = ("ended", "future", "handle", "loop", "started", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout
        #: ``time.monotonic()`` when the call started, set by the pool thread.
        self.started: float | None = None
        #: Set by the pool thread when the function returned or raised.
        self.ended = False
        self.future: asyncio.Future[Any] | None = None
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, future: asyncio.Future[Any]) -> None:
        """Watch ``future`` (the call's, submitted after this object existed)."""
        self.future = future
        if self.timeout is not None:
            self.handle = self.loop.call_later(self.timeout, self._check)

    def _check(self) -> None:
        if self.future is None or self.future.done() or self.timeout is None:
            return
        started = self.started
        if started is None:  # still waiting for a thread: its clock has not started
            self.handle = self.loop.call_later(self.timeout, self._check)
            return
        left = started + self.timeout - time.monotonic()
        if left > 0:
            self.handle = self.loop.call_later(left, self._check)
            return
        self.future.set_exception(TimeoutError())

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class DaemonThreadPool(_FuturesExecutor):
    """A thread pool whose threads never hold up interpreter exit.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit, so a
    task function stuck in a thread (timed out, or abandoned at shutdown)
    would keep a stopped worker process alive until it returns. These
    threads are daemons: a worker that has stopped exits at once.
    """

    def __init__(self, max_workers: int, name: str = "omniq-task") -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[
            tuple[Future[Any] | asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: Calls submitted and not finished: the pool keeps at least that many
        #: threads (up to max_workers), so a call never waits behind a busy one.
        self._unfinished = 0
        #: Calls running in a thread, and those of them whose caller gave up
        #: (timed out, cancelled): their threads do not count toward max_workers.
        self._running: set[asyncio.Future[Any]] = set()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._lock = threading.Lock()
        self._shutdown = False
        # Outcomes of calls made through ``call_async``, waiting to be handed to
        # their event loop; one wake-up of a loop delivers all of its outcomes.
        self._outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._put(future, functools.partial(fn, *args, **kwargs))
        return future

    def call_async(
        self, loop: asyncio.AbstractEventLoop, call: Callable[[], Any]
    ) -> asyncio.Future[Any]:
        """Run ``call`` in a pool thread; its outcome settles the returned loop future.

        Cheaper than ``loop.run_in_executor``: no concurrent future in between,
        and outcomes that finish close together reach the loop in one wake-up.
        Cancelling the future before the call starts means it never runs.
        """
        future: asyncio.Future[Any] = loop.create_future()
        self._put(future, call)
        return future

    def _put(self, target: Future[Any] | asyncio.Future[Any], call: Callable[[], Any]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((target, call))
            self._unfinished += 1
            self._spawn_if_needed()

    def _spawn_if_needed(self) -> None:
        """Start a thread for queued work while fewer than max_workers are usable (locked)."""
        threads = len(self._threads)
        if self._unfinished > threads and threads - len(self._abandoned) < self._max_workers:
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}-{threads}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def abandon(self, target: asyncio.Future[Any]) -> None:
        """The caller gave up on a running call: its thread no longer counts as a slot.

        The thread cannot be stopped; the pool starts another so queued calls
        are not stuck behind a function that may never return.
        """
        with self._lock:
            if target in self._running:
                self._abandoned.add(target)
                self._spawn_if_needed()

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            target, call = item
            if isinstance(target, Future):
                if target.set_running_or_notify_cancel():
                    try:
                        target.set_result(call())
                    except BaseException as exc:
                        target.set_exception(exc)
            elif not target.done():  # cancelled before it started: never run
                self._running.add(target)
                try:
                    outcome: _Outcome = (target, True, call())
                except BaseException as exc:
                    outcome = (target, False, exc)
                self._hand_over(outcome)
            with self._lock:
                self._unfinished -= 1
                if not isinstance(target, Future):
                    self._running.discard(target)
                    if target in self._abandoned:
                        self._abandoned.discard(target)
                        if len(self._threads) - len(self._abandoned) > self._max_workers:
                            # A replacement took this thread's place: retire it.
                            self._threads.remove(threading.current_thread())
                            return

    def _hand_over(self, outcome: _Outcome) -> None:
        loop = outcome[0].get_loop()
        with self._lock:
            waiting = self._outcomes.setdefault(loop, [])
            waiting.append(outcome)
            if len(waiting) > 1:
                return  # a delivery to this loop is already scheduled
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(self._deliver, loop)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            outcomes = self._outcomes.pop(loop, [])
        for future, ok, value in outcomes:
            if future.done():  # timed out or cancelled meanwhile: the outcome is dropped
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, StopIteration):
                future.set_exception(RuntimeError(f"task raised StopIteration: {value}"))
            else:
                future.set_exception(value)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class Executor:
    """Runs task functions for one worker, by kind."""

    def __init__(self, kind: str, threads: int) -> None:
        if kind not in EXECUTOR_KINDS:
            raise ConfigurationError(
                f"unknown executor {kind!r}: use one of {', '.join(EXECUTOR_KINDS)}"
            )
        self.kind = kind
        self._thread_count = max(1, threads)
        self._pool: DaemonThreadPool | None = None
        self._mp = multiprocessing.get_context("forkserver") if kind == "process" else None

    @property
    def pools_sync_calls(self) -> bool:
        """True when sync functions run in the thread pool (one thread per slot)."""
        return self._mp is None

    async def run(
        self,
        func: Callable[..., Any],
        ref: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_start: Callable[[], None] | None = None,
        trace_context: dict[str, str] | None = None,
    ) -> Any:
        """Call ``func(*args, **kwargs)``; TimeoutError past ``timeout`` seconds.

        ``on_start`` is called just before the function runs: on the loop for
        coroutines and processes, in the pool thread for sync functions (which
        may wait in the pool's queue for a free thread first; their timeout
        counts from when they start). ``trace_context`` (tracing, process
        executor): the W3C context the child process makes current.
        """
        if inspect.iscoroutinefunction(func):
            if on_start is not None:
                on_start()
            async with asyncio.timeout(timeout):
                return await func(*args, **kwargs)
        if self._mp is not None:
            if on_start is not None:
                on_start()
            return await self._run_process(ref, args, kwargs, timeout, trace_context)
        loop = asyncio.get_running_loop()
        # The thread runs in a copy of this context: omniq.current_task() works there.
        context = contextvars.copy_context()
        if timeout is None and on_start is None:
            result = await self._threads.call_async(
                loop, functools.partial(context.run, func, *args, **kwargs)
            )
        else:
            # The thread cannot be stopped: on timeout its future fails now and
            # the call's eventual outcome is dropped.
            state = _PoolCall(loop, timeout)

            def call() -> Any:
                state.started = time.monotonic()
                if on_start is not None:
                    on_start()
                try:
                    return context.run(func, *args, **kwargs)
                finally:
                    state.ended = True

            pool = self._threads
            future = pool.call_async(loop, call)
            state.arm(future)
            try:
                result = await future
            except BaseException:
                if state.started is not None and not state.ended:
                    pool.abandon(future)  # timed out or cancelled while it runs
                raise
            finally:
                state.cancel()
        if inspect.isawaitable(result):
            async with asyncio.timeout(timeout):
                result = await result
        return result

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Call a helper (a callback): coroutines on the loop, others in a thread."""
        if inspect.iscoroutinefunction(func):
            return await func(*args)
        loop = asyncio.get_running_loop()
        return await self._threads.call_async(loop, functools.partial(func, *args))

    async def _run_process(
        self,
        ref: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        trace_context: dict[str, str] | None = None,
    ) -> Any:
        assert self._mp is not None
        loop = asyncio.get_running_loop()
        receiver, sender = self._mp.Pipe(duplex=False)
        current = _current.get()
        task_info = None
        if current is not None:
            task_info = (current.id, current.attempt, current.queue, current.function)
        process = self._mp.Process(
            target=_child_main,
            args=(ref, args, kwargs, sender, os.getpid(), task_info, trace_context),
            daemon=True,
            name=f"omniq-task-{ref}",
        )
        await loop.run_in_executor(self._threads, process.start)
        sender.close()
        readable = asyncio.Event()
        fd = receiver.fileno()
        loop.add_reader(fd, readable.set)
        try:
            async with asyncio.timeout(timeout):
                message = await self._outcome_of(process, receiver, readable, current)
        except BaseException:
            process.kill()
            raise
        finally:
            loop.remove_reader(fd)
            receiver.close()
            await loop.run_in_executor(self._threads, process.join)
        if message[0] == "ok":
            return message[1]
        raise RemoteError(message[1], message[2], message[3])

    @staticmethod
    async def _outcome_of(
        process: Any,
        receiver: multiprocessing.connection.Connection,
        readable: asyncio.Event,
        current: CurrentTask | None,
    ) -> Any:
        """The child's outcome message; its progress messages on the way go to ``current``."""
        while True:
            await readable.wait()
            readable.clear()
            while receiver.poll():
                try:
                    message = receiver.recv()
                except EOFError:
                    process.join(1)
                    raise RemoteError(
                        "ProcessDied",
                        f"the task's process exited with code {process.exitcode}",
                        "",
                    ) from None
                if message[0] != "progress":
                    return message
                if current is not None:
                    current.progress(*message[1:])

    @property
    def _threads(self) -> DaemonThreadPool:
        if self._pool is None:
            self._pool = DaemonThreadPool(self._thread_count)
        return self._pool

    def shutdown(self) -> None:
        """Release the thread pool (running threads finish on their own); reusable after."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.shutdown(wait=False, cancel_futures=True)
