"""OpenTelemetry traces (``pip install "omniq[otel]"``): from the enqueue into each attempt.

Spans follow the OpenTelemetry semantic conventions for messaging:

- a PRODUCER span ``send <queue>`` around each enqueue (one span for an
  ``enqueue_many`` batch, with ``messaging.batch.message_count``); its W3C
  trace context (``traceparent``/``tracestate``, through the global
  propagator) is stored with each task (``Task.trace_context``);
- a CONSUMER span ``process <queue>`` around each attempt in the worker,
  current while the task's function runs (async functions, and sync ones in
  the worker's threads), so spans made by the function nest under it. The
  first attempt is a child of the producer span; a later attempt (a retry,
  a run after a lost worker) starts its own trace with a link to it.

Nothing happens unless opentelemetry-api is installed and a tracer provider
is set (``opentelemetry.trace.set_tracer_provider``): OmniQ imports
OpenTelemetry only then, checks the global provider cheaply on each enqueue
and attempt while none is set, and stores no trace context.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from omniq._version import VERSION
from omniq.models import Task
from omniq.services import hooks
from omniq.services.hooks import WriteTasks

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "ATTEMPT",
    "FUNCTION",
    "OUTCOME",
    "SYSTEM",
    "WORKER_ID",
    "AttemptTrace",
    "attempt_trace",
    "tracer",
]

R = TypeVar("R")

#: ``messaging.system`` of OmniQ's spans.
SYSTEM = "omniq"
#: OmniQ's own attributes: the task's function reference, its attempt
#: number (1 for the first run), how the attempt ended, the worker.
FUNCTION = "omniq.task.function"
ATTEMPT = "omniq.task.attempt"
OUTCOME = "omniq.task.outcome"
WORKER_ID = "omniq.worker.id"
TASK_NAME = "omniq.task.name"

#: Outcomes that are errors of the attempt (its span's status is ERROR).
_ERROR_OUTCOMES = frozenset({"failed", "retried", "lost"})


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry") is not None  # imports nothing
    except (ImportError, ValueError):
        return False


_AVAILABLE = _installed()
_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """OmniQ's tracer when tracing is on, else None (cheap: called per enqueue and attempt).

    On means opentelemetry-api is installed and a tracer provider other than
    the API's default (proxy) or no-op one is set. The API allows setting
    the global provider once, so a tracer found is kept; while none is set,
    the provider is looked at again at most every :data:`_RECHECK` seconds
    (a provider set later is used from then on).
    """
    if _tracer is not None:
        return _tracer
    if not _AVAILABLE or time.monotonic() < _recheck_at:
        return None
    return _find_tracer()


#: Seconds between two looks at the global provider while none is set.
_RECHECK = 1.0
_recheck_at = 0.0


def _find_tracer() -> Tracer | None:
    global _tracer, _AVAILABLE, _recheck_at
    try:
        from opentelemetry import trace
    except ImportError:  # another opentelemetry distribution, without the API
        _AVAILABLE = False
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _recheck_at = time.monotonic() + _RECHECK
        return None
    _tracer = provider.get_tracer("omniq", VERSION)
    return _tracer


# --- producer -------------------------------------------------------------------------------


def _around_send(tasks: list[Task], write: WriteTasks) -> Awaitable[list[str]] | None:
    """The :data:`omniq.services.hooks.send` hook: None (no work) unless tracing is on."""
    found = tracer()
    if found is None:
        return None
    return _send(found, tasks, write)


async def _send(found: Tracer, tasks: list[Task], write: WriteTasks) -> list[str]:
    from opentelemetry import propagate, trace

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
    with found.start_as_current_span(
        name, kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            stored = json.dumps(carrier, separators=(",", ":"), sort_keys=True)
            tasks = [attrs.evolve(x, trace_context=stored) for x in tasks]
        ids = await write(tasks)
        if len(tasks) == 1 and ids[0] != tasks[0].id:
            # A live task held the unique key: its id is the one returned.
            span.set_attribute("messaging.message.id", ids[0])
    return ids


if _AVAILABLE:
    hooks.send = _around_send


# --- consumer -------------------------------------------------------------------------------


def attempt_trace(worker_id: str) -> AttemptTrace | None:
    """A new attempt's trace when tracing is on, else None (the worker calls this per task)."""
    found = tracer()
    return None if found is None else AttemptTrace(found, worker_id)


class AttemptTrace:
    """The CONSUMER span ``process <queue>`` of one attempt of a task.

    The worker calls :meth:`start` when the function starts (on the event
    loop, or in the pool thread that runs it), :meth:`bind` to make the span
    current in a pool thread, and :meth:`end` once the outcome is written.
    """

    __slots__ = ("_token", "_tracer", "_worker_id", "span")

    def __init__(self, found: Tracer, worker_id: str) -> None:
        self._tracer = found
        self._worker_id = worker_id
        self._token: Token[Context] | None = None
        self.span: Span | None = None

    def start(self, task: Task, *, current: bool) -> None:
        """Start the span of ``task``'s attempt (``task.attempts`` already counts it).

        ``current``: also make it the current span of the calling context
        (the worker's asyncio task that runs this attempt) until :meth:`end`.
        """
        from opentelemetry import context, trace

        if self.span is not None:
            return
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
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        if current:
            self._token = context.attach(trace.set_span_in_context(span))

    def carrier(self) -> dict[str, str] | None:
        """The span's W3C context, for a child process (the process executor)."""
        from opentelemetry import propagate, trace

        if self.span is None:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def bind(self, func: Callable[..., R]) -> Callable[..., R]:
        """``func`` run with this attempt's span current (for a sync function in a pool thread)."""
        from opentelemetry import trace

        @functools.wraps(func)
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
        from opentelemetry import context, trace

        span = self.span
        if span is None:
            return
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
            span.set_status(trace.Status(trace.StatusCode.ERROR, description))
        span.end()


def in_child_process(
    carrier: dict[str, str], func: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """Run a task's function in the process executor's child with the attempt's span current.

    Spans the function makes (with a tracer provider set in the child, e.g.
    when its module is imported) are children of ``process <queue>``; they
    are flushed before the child exits (it ends without running atexit).
    """
    from opentelemetry import context, propagate, trace

    token = context.attach(propagate.extract(carrier, context=context.Context()))
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
    from opentelemetry import trace

    with trace.use_span(span, record_exception=False, set_status_on_exception=False):
        return await awaitable


def _parent_and_links(task: Task) -> tuple[Context, list[Any]]:
    """The first attempt's parent is the stored (producer) context; later ones link to it."""
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context

    stored = _extract(task.trace_context, propagate)
    if stored is None:
        return Context(), []
    if task.attempts <= 1:
        return stored, []
    linked = trace.get_current_span(stored).get_span_context()
    if not linked.is_valid:
        return Context(), []
    return Context(), [trace.Link(linked, {ATTEMPT: task.attempts})]


def _extract(stored: str | None, propagate: Any) -> Context | None:
    from opentelemetry.context import Context

    if not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    # Extracted onto an empty context: never onto whatever span is current.
    extracted: Context = propagate.extract(
        {str(k): str(v) for k, v in carrier.items()}, context=Context()
    )
    return extracted


def _type_name(error: BaseException) -> str:
    from omniq.worker.executors import RemoteError

    # A task's exception from a child process keeps its own type name.
    return error.type_name if isinstance(error, RemoteError) else type(error).__qualname__


def _exception_attributes(error: BaseException) -> dict[str, Any] | None:
    from omniq.worker.executors import RemoteError

    if not isinstance(error, RemoteError):
        return None
    return {"exception.type": error.type_name, "exception.stacktrace": error.remote_traceback}
