"""The database gauges: task counts, backlog age, workers, schedule lag, read at scrape time.

The figures come from the tables (one read transaction per scrape, never
per task), so they are exact across every worker that shares the database
and the same whichever process serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from omniq.errors import ConfigurationError
from omniq.metrics._loops import await_on
from omniq.models import TaskStatus
from omniq.services import Services
from omniq.services._storage import Storage
from omniq.services.overview import QueueGauges, QueueOverview

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ
    from omniq.sync import OmniQ

__all__ = ["DatabaseCollector", "gauge_families", "render_gauges"]

log = logging.getLogger("omniq.metrics")

_STATUSES = frozenset(status.value for status in TaskStatus)


def gauge_families(gauges: QueueGauges | None) -> list[Metric]:
    """The gauges as metric families (``None``: the database could not be read)."""
    up = GaugeMetricFamily(
        "omniq_database_up", "1 if this scrape read the database, else 0.", value=int(bool(gauges))
    )
    tasks = GaugeMetricFamily(
        "omniq_tasks", "Tasks in the database, by queue and status.", labels=["queue", "status"]
    )
    age = GaugeMetricFamily(
        "omniq_queue_oldest_pending_age_seconds",
        "How long the longest-waiting ready pending task of the queue has been due (0: none).",
        labels=["queue"],
    )
    workers = GaugeMetricFamily(
        "omniq_workers", "Registered worker processes, alive or lost.", labels=["state"]
    )
    lag = GaugeMetricFamily(
        "omniq_schedule_lag_seconds",
        "How far past its next run an overdue active schedule is (by name, else id).",
        labels=["schedule"],
    )
    if gauges is not None:
        queues = sorted({queue for queue, _ in gauges.tasks})
        for queue in queues:
            for value in sorted(_STATUSES):
                tasks.add_metric([queue, value], gauges.tasks.get((queue, value), 0))
        # A status written by hand (quarantined by maintenance) is still counted.
        for (queue, other), n in sorted(gauges.tasks.items()):
            if other not in _STATUSES:
                tasks.add_metric([queue, other], n)
        for queue in queues:
            waited = gauges.oldest_pending_age.get(queue)
            age.add_metric([queue], waited.total_seconds() if waited else 0.0)
        for state in ("alive", "lost"):
            workers.add_metric([state], gauges.workers.get(state, 0))
        for name, behind in sorted(gauges.schedule_lag.items()):
            lag.add_metric([name], behind.total_seconds())
    return [up, tasks, age, workers, lag]


def render_gauges(gauges: QueueGauges | None) -> bytes:
    """The gauges in Prometheus' text format (what ``/metrics`` answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(gauge_families(gauges)))
    return generate_latest(registry)


class _Fixed:
    """A collector of metric families read beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _storage(source: object) -> Storage:
    """The storage behind ``source`` (an app must be open by now)."""
    from omniq.app import AsyncOmniQ
    from omniq.sync import OmniQ

    if isinstance(source, OmniQ):
        source = source.app
    if isinstance(source, AsyncOmniQ):
        source = source.services  # ConfigurationError when not open
    if isinstance(source, Services):
        return source.storage
    raise ConfigurationError(
        f"metrics read an AsyncOmniQ, OmniQ or Services, got {type(source).__name__}"
    )


class DatabaseCollector:
    """A Prometheus collector of the database gauges, read from the tables at each scrape.

    ``source`` is an :class:`~omniq.AsyncOmniQ`, an :class:`~omniq.OmniQ` or
    :class:`~omniq.services.Services`; the read runs on the event loop that
    owns its connections, so ``collect()`` is called from another thread (an
    HTTP server's, as :func:`omniq.metrics.start_metrics_server` does). On that
    loop itself, use :meth:`read_async`. Metrics:

    - ``omniq_tasks{queue,status}``: tasks by queue and status (every status of
      every queue that has tasks, 0 included);
    - ``omniq_queue_oldest_pending_age_seconds{queue}``: how long the queue's
      longest-waiting ready pending task has been due (0 when none is);
    - ``omniq_workers{state}``: registered workers, ``alive`` and ``lost``;
    - ``omniq_schedule_lag_seconds{schedule}``: per overdue active schedule,
      now minus its ``next_run_at``;
    - ``omniq_database_up``: 1 if the read succeeded (else 0, and no other gauge).
    """

    def __init__(self, source: AsyncOmniQ | OmniQ | Services, *, timeout: float = 8.0) -> None:
        self.source = source
        self.timeout = timeout

    async def read_async(self) -> QueueGauges:
        """Read the gauges (on the loop that owns the source's connections)."""
        return await QueueOverview(_storage(self.source)).gauges_async()

    def read(self) -> QueueGauges | None:
        """Read the gauges from another thread; None (and a warning logged) if that failed."""
        try:
            storage = _storage(self.source)
            if storage.loop is None:
                raise ConfigurationError("the database is not open")
            return await_on(
                storage.loop, lambda: QueueOverview(storage).gauges_async(), self.timeout
            )
        except Exception as exc:
            log.warning("metrics: the database gauges were not read: %s", exc)
            return None

    def collect(self) -> Iterator[Metric]:
        """The gauges, read now."""
        yield from gauge_families(self.read())

    def describe(self) -> Iterator[Metric]:
        """The gauges' names and types, without reading anything."""
        yield from gauge_families(None)
