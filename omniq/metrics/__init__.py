"""Prometheus metrics (the ``metrics`` extra: ``pip install "omniq[metrics]"``).

- :class:`DatabaseCollector`: gauges read from the tables at each scrape
  (tasks by queue and status, backlog age, workers alive and lost, schedule
  lag): exact across every worker of the database.
- :class:`WorkerMetrics`: one process's counters and histograms (finished
  tasks by outcome, retries, attempt durations, waits, running tasks); pass
  it to a worker with ``metrics=``.
- :func:`start_metrics_server`: serve both on ``http://addr:port/metrics``.

The core package never imports this one; without ``metrics=`` a worker does
no per-task metrics work.
"""

from __future__ import annotations

try:
    import prometheus_client as _prometheus_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f'omniq.metrics needs prometheus_client: pip install "omniq[metrics]" ({exc})'
    ) from exc

from omniq.metrics._database import DatabaseCollector, gauge_families, render_gauges
from omniq.metrics._server import MetricsServer, serve_async, start_metrics_server
from omniq.metrics._worker import DURATION_BUCKETS, WAIT_BUCKETS, WorkerMetrics

__all__ = [
    "DURATION_BUCKETS",
    "WAIT_BUCKETS",
    "DatabaseCollector",
    "MetricsServer",
    "WorkerMetrics",
    "gauge_families",
    "render_gauges",
    "serve_async",
    "start_metrics_server",
]
