"""Row 13: what OpenTelemetry tracing costs when it is on (issue 15).

With ``OMNIQ_BENCH_TRACING=1`` in its environment, a benchmark process sets
the SDK's tracer provider with a BatchSpanProcessor and an exporter that
drops the spans (a collector's cost is not OmniQ's): every enqueue makes a
``send`` span and stores its context, every attempt a ``process`` span. The
same measurement then runs with tracing off (no provider set: OmniQ does no
tracing work), in the same run.

``python -m bench.tracing enqueue DB N`` prints ``{"event": "done", "rate": ...}``
after N sequential ``enqueue_async``; ``python -m bench.tracing fill DB N``
enqueues N no-op tasks in batches (setup of the burn-down).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import omniq_side
from bench.common import Child, Row, child_env, emit, fmt_rate, ratio_row, sqlite_url
from bench.workers import run_omniq_workers, span_rate
from bench.workspace import Sizes, Workspace

#: Set (to anything) in a benchmark process's environment: trace everything.
TRACING_ENV = "OMNIQ_BENCH_TRACING"

LABELS = (
    "13a. burn-down, tracing on vs off",
    "13b. enqueue_async, tracing on vs off",
)


def install_if_asked() -> None:
    """Set the SDK's tracer provider (spans batched, then dropped) when TRACING_ENV is set."""
    if not os.environ.get(TRACING_ENV):
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def _child(args: list[str], ws: Workspace, traced: bool) -> dict[str, float]:
    env = child_env(**({TRACING_ENV: "1"} if traced else {}))
    child = Child(["-m", "bench.tracing", *args], ws.root, env)
    try:
        report = child.expect("done", timeout=900)
        child.finish()
    finally:
        child.kill()
    return report


def _burn(ws: Workspace, n: int, traced: bool) -> float:
    db = ws.omniq_db("traced-burn" if traced else "untraced-burn")
    _child(["fill", str(db), str(n)], ws, traced)
    env = {TRACING_ENV: "1"} if traced else None
    done, tasks_per_s = span_rate(run_omniq_workers(sqlite_url(db), 1, ws.root, env=env))
    if done != n:
        raise RuntimeError(f"the worker (tracing {traced}) completed {done} of {n} tasks")
    return tasks_per_s


def _enqueue(ws: Workspace, n: int, traced: bool) -> float:
    db = ws.omniq_db("traced-one" if traced else "untraced-one")
    return float(_child(["enqueue", str(db), str(n)], ws, traced)["rate"])


def bench_tracing(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Burn-down and sequential enqueue, each with tracing on and off (best of a few runs)."""
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        from bench.common import skipped_row

        return [skipped_row(x, "needs opentelemetry-sdk (the dev extra)") for x in LABELS]
    burn_on = burn_off = one_on = one_off = 0.0
    for _ in range(sizes.process_repeats):
        burn_off = max(burn_off, _burn(ws, sizes.burn, traced=False))
        burn_on = max(burn_on, _burn(ws, sizes.burn, traced=True))
        one_off = max(one_off, _enqueue(ws, sizes.single, traced=False))
        one_on = max(one_on, _enqueue(ws, sizes.single, traced=True))
    return [
        ratio_row(
            LABELS[0],
            burn_on,
            burn_off,
            0.5,
            ">= 0.5x",
            f"Row 5's burn-down ({sizes.burn:,} sync no-op tasks, one worker process) with "
            "tracing on (the SDK's TracerProvider, BatchSpanProcessor, an exporter that drops "
            "the spans; tasks enqueued with tracing on, so each attempt's span has the "
            f"stored parent) vs off in the same run ({fmt_rate(burn_off)}: no provider set). "
            "No-op tasks are the worst case: a span costs the same (mostly the SDK's own "
            "span and attribute handling) whatever the task does.",
        ),
        ratio_row(
            LABELS[1],
            one_on,
            one_off,
            0.75,
            ">= 0.75x",
            f"Row 2's {sizes.single:,} sequential enqueue_async with tracing on (a `send` span "
            "per call and its trace context stored with the task) vs off, same run.",
        ),
    ]


async def _enqueue_rate(db: Path, n: int) -> None:
    emit({"event": "done", "rate": await omniq_side.enqueue_single_rate(db, n)})


async def _fill(db: Path, n: int) -> None:
    await omniq_side.fill(db, n)
    emit({"event": "done"})


def main(argv: list[str]) -> None:
    """``enqueue DB N`` or ``fill DB N`` (see the module docstring)."""
    install_if_asked()
    command, db, n = argv[0], Path(argv[1]), int(argv[2])
    if command == "enqueue":
        asyncio.run(_enqueue_rate(db, n))
    elif command == "fill":
        asyncio.run(_fill(db, n))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
