"""OpenTelemetry spans written to a file, for the tracing tests (the SDK is a dev dependency).

A test process never sets the global tracer provider (the API allows it
once per process): the traced parts run in subprocesses that call
:func:`install` when ``OMNIQ_TEST_SPANS`` names a file. Each finished span
becomes one JSON line, appended with one ``write`` call (atomic across the
worker's processes); :func:`read_spans` reads them back.

Run as a script, this is the "web app" of the tests::

    python tests/tracing_spans.py URL

It opens ``AsyncOmniQ`` on URL, and inside a SERVER span ``GET /checkout``
enqueues the tasks of :mod:`tests.tracing_tasks`; it prints their ids as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

ENV = "OMNIQ_TEST_SPANS"
TASKS = "tests.tracing_tasks"


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file as one JSON line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            line = json.dumps(span_record(span)) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests look at in a span (ids as hex strings)."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
        "parent_id": trace.format_span_id(span.parent.span_id) if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [
            {
                "trace_id": trace.format_trace_id(link.context.trace_id),
                "span_id": trace.format_span_id(link.context.span_id),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


def install(path: str | None = None) -> None:
    """Set the global tracer provider: every span ends up as a line of ``path`` (or $ENV)."""
    target = path or os.environ[ENV]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(target)))
    trace.set_tracer_provider(provider)


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans written to ``path`` so far (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def produce(url: str) -> dict[str, Any]:
    """The web request: a SERVER span, and inside it the enqueues of the tests' tasks."""
    from omniq import AsyncOmniQ

    tracer = trace.get_tracer("tests.web")
    async with AsyncOmniQ(url=url) as oq:
        with tracer.start_as_current_span("GET /checkout", kind=trace.SpanKind.SERVER):
            ids = {
                "async": await oq.enqueue_async(f"{TASKS}:charge_card", ["order-1"]),
                "sync": await oq.enqueue_async(f"{TASKS}:render_invoice", ["order-1"]),
                "failing": await oq.enqueue_async(
                    f"{TASKS}:always_fails", ["order-1"], max_retries=1, retry_delay=0
                ),
            }
            batch = [oq.build_task(f"{TASKS}:charge_card", [f"order-{n}"]) for n in (2, 3, 4)]
            ids["batch"] = await oq.enqueue_many_async(batch)
    return ids


if __name__ == "__main__":
    install()
    print(json.dumps(asyncio.run(produce(sys.argv[1]))))
