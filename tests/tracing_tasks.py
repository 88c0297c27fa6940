"""Task functions of the tracing tests: each makes a span of its own inside the task.

When ``OMNIQ_TEST_SPANS`` is set and no tracer provider is (a child process
of the process executor imports this module afresh), importing this module
sets the file-writing provider of :mod:`tests.tracing_spans`.
"""

from __future__ import annotations

import os
import threading

from opentelemetry import trace

from tests import tracing_spans

if os.environ.get(tracing_spans.ENV) and isinstance(
    trace.get_tracer_provider(), trace.ProxyTracerProvider
):
    tracing_spans.install()

tracer = trace.get_tracer("tests.tracing_tasks")


async def charge_card(order: str) -> str:
    """An async task (runs on the worker's event loop)."""
    with tracer.start_as_current_span("charge card") as span:
        span.set_attribute("order", order)
        return f"charged {order}"


def render_invoice(order: str) -> str:
    """A sync task (runs in the worker's thread pool, or in a child process)."""
    with tracer.start_as_current_span("render invoice") as span:
        span.set_attribute("order", order)
        span.set_attribute("thread", threading.current_thread().name)
        span.set_attribute("pid", os.getpid())
        return f"invoice {order}"


def always_fails(order: str) -> None:
    """A task whose every attempt fails."""
    raise ValueError(f"card declined for {order}")
