"""The spans of :mod:`omniq.tracing`, made once tracing is on (imports OpenTelemetry's API)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any, TypeVar, cast

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from omniq.models import Task
from omniq.models.task import task_traced
from omniq.services.hooks import WriteTasks
from omniq.worker.executors import RemoteError

__all__ = [
    "ATTEMPT",
    "FUNCTION",
    "OUTCOME",
    "SYSTEM",
    "TASK_NAME",
    "WORKER_ID",
    "AttemptTrace",
    "Spans",
    "in_child_process",
]

R = TypeVar("R")

log = logging.getLogger("omniq.tracing")

#: ``messaging.system`` of OmniQ's spans.
SYSTEM = "omniq"
#: OmniQ's own attributes: the task's function reference, its attempt
#: number (1 for the first run), how the attempt ended, its name, the worker.
FUNCTION = "omniq.task.function"
ATTEMPT = "omniq.task.attempt"
OUTCOME = "omniq.task.outcome"
TASK_NAME = "omniq.task.name"
WORKER_ID = "omniq.worker.id"

#: Outcomes that are errors of the attempt (its span's status is ERROR).
_ERROR_OUTCOMES = frozenset({"failed", "retried", "lost"})


class Spans:
    """Makes OmniQ's spans with ``tracer``."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    async def send(self, tasks: list[Task], write: WriteTasks) -> list[str]:
        """``write(tasks)`` inside a PRODUCER span, the tasks stamped with its context."""
        queues = {x.queue_name for x in tasks}
        queue = next(iter(queues)) if len(queues) == 1 else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }
        if queue is not None:
            attributes["messaging.destination.name"] = queue
        if len(tasks) == 1:
            attributes["messaging.message.id"] = tasks[0].id
            attributes[FUNCTION] = tasks[0].func
        else:
            attributes["messaging.batch.message_count"] = len(tasks)
        name = f"send {queue}" if queue is not None else "send"
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                stored = json.dumps(carrier, separators=(",", ":"), sort_keys=True)
                tasks = [task_traced(x, stored) for x in tasks]
            ids = await write(tasks)
            if len(tasks) == 1 and ids[0] != tasks[0].id:
                # A live task held the unique key: its id is the one returned.
                span.set_attribute("messaging.message.id", ids[0])
        return ids

    def attempt(self, worker_id: str) -> AttemptTrace:
        """The trace of a new attempt (its span starts with :meth:`AttemptTrace.start`)."""
        return AttemptTrace(self.tracer, worker_id)


class AttemptTrace:
    """The CONSUMER span ``process <queue>`` of one attempt of a task.

    The worker calls :meth:`start` when the function starts (on the event
    loop, or in the pool thread that runs it), :meth:`bind` to make the span
    current in a pool thread, and :meth:`end` once the outcome is written.
    """

    __slots__ = ("_token", "_tracer", "_worker_id", "span")

    def __init__(self, tracer: Tracer, worker_id: str) -> None:
        self._tracer = tracer
        self._worker_id = worker_id
        self._token: Token[Context] | None = None
        self.span: Span | None = None

    def start(self, task: Task, *, current: bool) -> None:
        """Start the span of ``task``'s attempt (``task.attempts`` already counts it).

        ``current``: also make it the current span of the calling context
        (the worker's asyncio task that runs this attempt) until :meth:`end`.
        """
        if self.span is not None:
            return
        try:
            self._start(task, current)
        except Exception:  # tracing never stops a task from running
            log.exception("task %s: its span could not be started", task.id)

    def _start(self, task: Task, current: bool) -> None:
        parent, links = _parent_and_links(task)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": task.queue_name,
            "messaging.message.id": task.id,
            FUNCTION: task.func,
            ATTEMPT: task.attempts,
            WORKER_ID: self._worker_id,
        }
        if task.name:
            attributes[TASK_NAME] = task.name
        self.span = span = self._tracer.start_span(
            f"process {task.queue_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        if current:
            self._token = context.attach(trace.set_span_in_context(span))

    def carrier(self) -> dict[str, str] | None:
        """The span's W3C context, for a child process (the process executor)."""
        if self.span is None:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def bind(self, func: Callable[..., R]) -> Callable[..., R]:
        """``func`` run with this attempt's span current (for a sync function in a pool thread)."""

        def traced(*args: Any, **kwargs: Any) -> R:
            span = self.span
            if span is None:
                return func(*args, **kwargs)
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                # Awaited on the event loop (a sync callable returning a coroutine).
                return cast("R", _awaited_in(span, result))
            return result

        return traced

    def end(self, outcome: str | None, error: BaseException | None) -> None:
        """End the span: the attempt's outcome, and its error recorded when it failed."""
        span = self.span
        if span is None:
            return
        self.span = None
        try:
            self._end(span, outcome, error)
        except Exception:  # tracing never stops the worker
            log.exception("an attempt's span could not be ended")

    def _end(self, span: Span, outcome: str | None, error: BaseException | None) -> None:
        if self._token is not None:
            context.detach(self._token)
            self._token = None
        outcome = outcome or "lost"
        span.set_attribute(OUTCOME, outcome)
        if outcome in _ERROR_OUTCOMES:
            if error is not None:
                span.record_exception(error, attributes=_exception_attributes(error))
                span.set_attribute("error.type", _type_name(error))
                description = f"{_type_name(error)}: {error}"
            else:
                description = f"attempt {outcome}"
            span.set_status(Status(StatusCode.ERROR, description))
        span.end()


def in_child_process(
    carrier: dict[str, str], func: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """Run a task's function in the process executor's child with the attempt's span current.

    Spans the function makes (with a tracer provider set in the child, e.g.
    when its module is imported) are children of ``process <queue>``; they
    are flushed before the child exits (it ends without running atexit).
    """
    token = context.attach(propagate.extract(carrier, context=Context()))
    try:
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))  # the task copies the attached context
        return result
    finally:
        context.detach(token)
        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if callable(flush):  # the SDK's provider; the API's has none
            flush()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _awaited_in(span: Span, awaitable: Awaitable[Any]) -> Any:
    with trace.use_span(span, record_exception=False, set_status_on_exception=False):
        return await awaitable


def _parent_and_links(task: Task) -> tuple[Context, list[Link]]:
    """The first attempt's parent is the stored (producer) context; later ones link to it."""
    stored = _extract(task.trace_context)
    if stored is None:
        return Context(), []
    if task.attempts <= 1:
        return stored, []
    linked = trace.get_current_span(stored).get_span_context()
    if not linked.is_valid:
        return Context(), []
    return Context(), [Link(linked, {ATTEMPT: task.attempts})]


@functools.lru_cache(maxsize=64)
def _extract(stored: str | None) -> Context | None:
    """The context stored with a task (cached: the tasks of a batch share theirs)."""
    if not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    # Extracted onto an empty context: never onto whatever span is current.
    return propagate.extract({str(k): str(v) for k, v in carrier.items()}, context=Context())


def _type_name(error: BaseException) -> str:
    # A task's exception from a child process keeps its own type name.
    return error.type_name if isinstance(error, RemoteError) else type(error).__qualname__


def _exception_attributes(error: BaseException) -> dict[str, Any] | None:
    if not isinstance(error, RemoteError):
        return None
    return {"exception.type": error.type_name, "exception.stacktrace": error.remote_traceback}
