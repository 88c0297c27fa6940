"""``omniq worker``: run a worker until SIGTERM/SIGINT, or drain the ready tasks (``--burst``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import attrs

from omniq.cli_output import CLIError, duration_arg, emit, record
from omniq.config import OmniQConfig
from omniq.models.settings import evolve_settings

__all__ = ["cmd_worker", "metrics_extra"]

_log = logging.getLogger("omniq.worker")

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_app_names(names: list[str]) -> None:
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise CLIError(
                f"--app: {name!r} is not a module name (a dotted import path, e.g. myapp.tasks)"
            )


async def cmd_worker(args: argparse.Namespace, config: OmniQConfig) -> int:
    """Run ``omniq worker``."""
    from omniq.app import AsyncOmniQ

    _check_app_names(args.app)
    settings = config.settings
    changes: dict[str, Any] = {
        name: duration_arg(value, f"--{name.replace('_', '-')}")
        for name, value in (
            ("lease_duration", args.lease_duration),
            ("heartbeat_interval", args.heartbeat_interval),
        )
        if value
    }
    if changes:
        settings = evolve_settings(settings, **changes)
    oq = AsyncOmniQ.from_config(attrs.evolve(config, settings=settings))
    try:
        oq.registry.import_modules(args.app)
    except ImportError as exc:
        raise CLIError(f"--app: cannot import {exc.name or exc}: {exc}") from None
    oq.adopt_periodic(args.app)  # @periodic schedules of those modules: upserted on open
    options: dict[str, Any] = {
        "run_scheduler": not args.no_scheduler,
        "gc_freeze": not args.no_gc_freeze,
    }
    if args.poll_interval:
        options["poll_interval"] = duration_arg(args.poll_interval, "--poll-interval")
    if args.grace_period:
        options["grace_period"] = duration_arg(args.grace_period, "--grace-period")
    if args.maintenance_interval:
        options["maintenance_interval"] = duration_arg(
            args.maintenance_interval, "--maintenance-interval"
        )
    if args.prefetch is not None:
        options["prefetch"] = args.prefetch
    if args.metrics_port is not None:
        options["metrics"] = metrics_extra("--metrics-port").WorkerMetrics()
    queues = None
    if args.queues:  # empty: not given (every queue), as for every option here
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        if not queues:
            raise CLIError(
                f"--queues: no queue name in {args.queues!r} (leave it out to serve all)"
            )
    if not args.burst and not await _open_when_reachable(oq, args):
        await oq.close_async()  # what a try left open (say, before its schedules' upsert)
        return 0  # stopped by a signal before the database could be reached
    async with oq:  # opened above (serving) or here (--burst fails at once)
        worker = oq._make_worker(
            queues=queues, concurrency=args.concurrency, executor=args.executor, **options
        )
        if args.metrics_port is not None:  # served by a daemon thread until the process exits
            server = metrics_extra("--metrics-port").start_metrics_server(
                oq, port=args.metrics_port, addr=args.metrics_addr, worker=options["metrics"]
            )
            logging.getLogger("omniq").info("metrics on %s", server.url)
        if args.burst:
            total = sum(
                n
                for per in (await oq.services.queue.stats_async()).values()
                for s, n in per.items()
                if s in ("pending", "waiting")
            )
            # A \r progress line only on a terminal where no per-task lines are logged.
            progress = sys.stderr.isatty() and not logging.getLogger("omniq.worker").isEnabledFor(
                logging.INFO
            )
            reporter = (
                asyncio.get_running_loop().create_task(_progress(worker, total))
                if progress
                else None
            )
            _replay_early_signal(worker)
            try:
                stats = await worker.run_until_complete_async(install_signal_handlers=True)
            finally:
                if reporter is not None:
                    reporter.cancel()
            if progress:
                sys.stderr.write("\n")
            emit(args, stats, lambda: record(stats))
        else:
            _replay_early_signal(worker)
            await worker.run_async(install_signal_handlers=True)
    return 0


#: A serving worker that cannot reach its database at start-up tries again after
#: this many seconds, doubling up to _OPEN_RETRY_MAX.
_OPEN_RETRY_FIRST = 0.5
_OPEN_RETRY_MAX = 10.0
#: What a server that cannot take a connection yet says (SQLSTATE): shutting down
#: or starting up (57P01-57P03), at its connection limit (53300), class 08.
_NOT_YET = ("57P01", "57P02", "57P03", "53300")


#: Errors of a connection that did not come about (yet).
_UNREACHABLE = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    socket.gaierror,
    TimeoutError,
)


def _worth_waiting(exc: BaseException) -> bool:
    """True when ``exc`` (opening the database failed) says the server is not
    reachable yet: refused, reset, unknown host, timed out, starting or full.

    A TLS failure (a certificate, an SSL mode the server refuses) is a setting
    to fix, as is a password: not waited for.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    transient = False
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError) or "SSL" in str(err):
            return False
        state = getattr(err, "sqlstate", None)
        if isinstance(err, _UNREACHABLE) or (
            isinstance(state, str) and (state.startswith("08") or state in _NOT_YET)
        ):
            transient = True
        todo += [getattr(err, "orig", None), err.__cause__, err.__context__]
    return transient


async def _open_when_reachable(oq: Any, args: argparse.Namespace) -> bool:
    """Open ``oq``, waiting while its database cannot be reached; False if a SIGTERM
    came first (it also cuts short a connection attempt the server does not answer).

    A worker started beside its database (a compose file, a host booting, a
    server restarting) waits for it, as it rides out an outage once running:
    each failed try is logged with the reason, the next comes after a doubling
    pause. Only an unreachable server is waited for (see :func:`_worth_waiting`);
    a wrong password, a TLS setting, a missing database or an old schema fail at
    once (exit 1).
    """
    from omniq.cli_errors import explain

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wake() -> None:  # from the SIGTERM handler, on this thread
        loop.call_soon_threadsafe(stop.set)

    _early_wakers.append(wake)
    pause = _OPEN_RETRY_FIRST
    try:
        while not _early_signals:
            try:
                if await _unless_stopped(oq.open_async(), stop):
                    return True
                break  # stopped while connecting
            except Exception as exc:
                if not _worth_waiting(exc):
                    raise
                reason, _ = explain(exc, args)
                _log.warning("waiting for the database: %s; trying again in %gs", reason, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(pause * 2, _OPEN_RETRY_MAX)
    finally:
        _early_wakers.remove(wake)
    _log.warning("%s received before the database could be reached: stopped", _early_signals[0])
    return False


async def _unless_stopped(opening: Coroutine[Any, Any, Any], stop: asyncio.Event) -> bool:
    """Await ``opening``; True once it is done, False if ``stop`` is set first (it
    is then cancelled, and what it opened is closed by it)."""
    task = asyncio.ensure_future(opening)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    if not task.cancelled() and task.done():
        task.result()  # its error, if it failed
        return True
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        pass  # it failed while being stopped: nothing to report
    return False


#: SIGTERM received while `omniq worker` started (before the worker's own handlers):
#: its default action would kill the process; it stops the worker once that runs.
#: (Ctrl+C keeps its own meaning meanwhile: KeyboardInterrupt, exit 130.)
_early_signals: list[str] = []
#: Called when such a signal is noted (a start-up wait for the database ends at once).
_early_wakers: list[Callable[[], None]] = []


@contextlib.contextmanager
def early_signals_caught() -> Iterator[None]:
    """Note SIGTERM from now until the worker handles it itself (main thread only);
    the handler from before is back afterwards (main() called in a process that goes on)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, _frame: Any) -> None:
        _early_signals.append(signal.Signals(signum).name)
        for wake in list(_early_wakers):
            wake()

    _early_signals.clear()
    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replay_early_signal(worker: Any) -> None:
    """Once the worker's loop runs (its handlers installed), act on an early signal."""

    def replay() -> None:
        if _early_signals:
            worker.stop_for_exit(f"{_early_signals[0]} received")

    asyncio.get_running_loop().call_soon(replay)


def metrics_extra(what: str) -> Any:
    """The omniq.metrics module, or a clear error naming the extra it needs."""
    try:
        import omniq.metrics as metrics
    except ImportError as exc:
        hint = 'pip install "omniq[metrics]"'
        raise CLIError(f"{what} needs the metrics extra: {hint} ({exc})", 1) from None
    return metrics


async def _progress(worker: Any, total: int) -> None:
    started = time.perf_counter()
    while True:
        stats = worker.get_stats()
        done = stats.completed + stats.failed
        rate = done / max(time.perf_counter() - started, 1e-9)
        sys.stderr.write(f"\r  {done}/{total} done, {stats.running} running, {rate:,.0f} tasks/s ")
        sys.stderr.flush()
        await asyncio.sleep(0.2)
