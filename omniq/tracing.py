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
is set (``opentelemetry.trace.set_tracer_provider``). This module imports no
OpenTelemetry code until then: while no provider is set it looks at the
global provider at most once a second; once one is, the spans are made by
:mod:`omniq._otel_spans`.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from omniq._version import VERSION
from omniq.models import Task
from omniq.services import hooks
from omniq.services.hooks import WriteTasks

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from omniq._otel_spans import AttemptTrace, Spans

__all__ = ["attempt_trace", "tracer"]

#: Seconds between two looks at the global provider while none is set.
_RECHECK = 1.0


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry") is not None  # imports nothing
    except (ImportError, ValueError):
        return False


_AVAILABLE = _installed()
_spans: Spans | None = None
_recheck_at = 0.0


def _active() -> Spans | None:
    """The span maker when tracing is on, else None (cheap: called per enqueue and attempt).

    On means opentelemetry-api is installed and a tracer provider other than
    the API's default (proxy) or no-op one is set. The API allows setting
    the global provider once, so what was found is kept.
    """
    if _spans is not None:
        return _spans
    if not _AVAILABLE or time.monotonic() < _recheck_at:
        return None
    return _find()


def _find() -> Spans | None:
    global _spans, _AVAILABLE, _recheck_at
    try:
        from opentelemetry import trace
    except ImportError:  # another opentelemetry distribution, without the API
        _AVAILABLE = False
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _recheck_at = time.monotonic() + _RECHECK
        return None
    from omniq._otel_spans import Spans

    _spans = Spans(provider.get_tracer("omniq", VERSION))
    return _spans


def tracer() -> Tracer | None:
    """OmniQ's tracer when tracing is on (a tracer provider is set), else None."""
    spans = _active()
    return None if spans is None else spans.tracer


def attempt_trace(worker_id: str) -> AttemptTrace | None:
    """A new attempt's trace when tracing is on, else None (the worker calls this per task)."""
    spans = _active()
    return None if spans is None else spans.attempt(worker_id)


def _around_send(tasks: list[Task], write: WriteTasks) -> Awaitable[list[str]] | None:
    """The :data:`omniq.services.hooks.send` hook: None (no work) unless tracing is on."""
    spans = _active()
    return None if spans is None else spans.send(tasks, write)


if _AVAILABLE:
    hooks.send = _around_send
