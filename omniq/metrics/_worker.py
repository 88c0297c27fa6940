"""Per-process worker metrics: attempts, outcomes, durations, waits, running tasks."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from omniq.metrics._loops import call_on
from omniq.models import Task
from omniq.worker.metering import OUTCOMES

if TYPE_CHECKING:
    from omniq.worker import Worker

__all__ = ["DURATION_BUCKETS", "WAIT_BUCKETS", "WorkerMetrics"]

log = logging.getLogger("omniq.metrics")

#: Seconds: from 5 ms (no-op tasks) to an hour (the longest default timeout is 30 min).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
WAIT_BUCKETS = DURATION_BUCKETS

#: How long a scrape waits for a worker's event loop to count its running tasks.
_RUNNING_TIMEOUT = 5.0


class WorkerMetrics:
    """The Prometheus metrics of the workers of one process (a collector).

    Pass it to a worker (``Worker(..., metrics=m)``, ``oq.start_worker(metrics=m)``);
    several workers may share one. Serve it with
    :func:`omniq.metrics.start_metrics_server` (``worker=m``) or register it in
    a registry of your own (``registry.register(m)``). Its metrics:

    - ``omniq_tasks_finished_total{queue,task,outcome}``: tasks this process
      finished, ``outcome`` one of ``completed``, ``failed``, ``cancelled``;
    - ``omniq_task_retries_total{queue,task}``: attempts that failed and were
      scheduled to retry;
    - ``omniq_task_duration_seconds{queue,task}``: how long each attempt's
      function ran (every attempt that started);
    - ``omniq_task_wait_seconds{queue}``: from when each attempt was due (its
      ``run_at``: enqueue time, the time asked for, or a retry's time) to its start;
    - ``omniq_tasks_running{queue}``: functions running now (read at scrape time).

    ``task`` is the function's reference (``package.module:function``); no
    label ever carries a task id or an argument. An attempt whose outcome was
    left to lease recovery (its worker lost the lease) counts in the duration
    histogram only.
    """

    def __init__(
        self,
        *,
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        wait_buckets: Sequence[float] = WAIT_BUCKETS,
    ) -> None:
        # registry=None: this object is the collector, in whatever registry serves it.
        self.finished = Counter(
            "omniq_tasks_finished",
            "Tasks this process finished, by outcome (completed, failed, cancelled).",
            ["queue", "task", "outcome"],
            registry=None,
        )
        self.retries = Counter(
            "omniq_task_retries",
            "Attempts that failed and were scheduled to retry.",
            ["queue", "task"],
            registry=None,
        )
        self.duration = Histogram(
            "omniq_task_duration_seconds",
            "How long each attempt's function ran.",
            ["queue", "task"],
            buckets=duration_buckets,
            registry=None,
        )
        self.wait = Histogram(
            "omniq_task_wait_seconds",
            "From when each attempt was due (run_at) to its start.",
            ["queue"],
            buckets=wait_buckets,
            registry=None,
        )
        # Label children, looked up once per label set (not per task).
        self._finished: dict[tuple[str, str, str], Any] = {}
        self._retries: dict[tuple[str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._waits: dict[str, Any] = {}
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        self._queues: set[str] = set()
        #: Guards ``_queues`` (added to from pool threads, read by scrapes).
        self._lock = threading.Lock()

    # --- the worker's hook (omniq.worker.metering.WorkerMetricsHook) -----------------

    def attach(self, worker: Worker) -> None:
        """Count the running tasks of ``worker`` too (called by the worker)."""
        self._workers.add(worker)
        with self._lock:
            self._queues.update(worker.queues or ())

    def attempt_started(self, task: Task, now: datetime) -> None:
        """An attempt's function starts: observe how long it waited since it was due."""
        child = self._waits.get(task.queue_name)
        if child is None:
            child = self._waits[task.queue_name] = self.wait.labels(task.queue_name)
            with self._lock:
                self._queues.add(task.queue_name)
        child.observe(max((now - task.run_at).total_seconds(), 0.0))

    def attempt_ended(self, task: Task, seconds: float) -> None:
        """An attempt's function returned or raised after ``seconds``."""
        key = (task.queue_name, task.func)
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.duration.labels(*key)
        child.observe(seconds)

    def attempt_settled(self, task: Task, outcome: str) -> None:
        """An attempt's outcome is committed: count the finished task or the retry."""
        if outcome == "retried":
            key = (task.queue_name, task.func)
            child = self._retries.get(key)
            if child is None:
                child = self._retries[key] = self.retries.labels(*key)
        else:
            full = (task.queue_name, task.func, outcome)
            child = self._finished.get(full)
            if child is None:
                if outcome not in OUTCOMES:
                    return
                child = self._finished[full] = self.finished.labels(*full)
        child.inc()

    # --- the collector ---------------------------------------------------------------------

    def running(self) -> dict[str, int]:
        """Functions running now in the attached workers, per queue (0 for queues seen)."""
        with self._lock:
            counts = dict.fromkeys(self._queues, 0)
        for worker in list(self._workers):
            try:
                per_queue = call_on(worker.storage.loop, worker.running_per_queue, _RUNNING_TIMEOUT)
            except Exception as exc:
                log.warning("metrics: worker %s did not answer: %s", worker.worker_id, exc)
                continue
            for queue, n in per_queue.items():
                counts[queue] = counts.get(queue, 0) + n
        return counts

    def _running_family(self, counts: Iterable[tuple[str, int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "omniq_tasks_running", "Task functions running now in this process.", labels=["queue"]
        )
        for queue, n in sorted(counts):
            family.add_metric([queue], n)
        return family

    def collect(self) -> Iterator[Metric]:
        """The metrics, with the running tasks counted now."""
        yield from self.finished.collect()
        yield from self.retries.collect()
        yield from self.duration.collect()
        yield from self.wait.collect()
        yield self._running_family(self.running().items())

    def describe(self) -> Iterator[Metric]:
        """The metrics' names and types, without reading anything."""
        yield from self.finished.describe()
        yield from self.retries.describe()
        yield from self.duration.describe()
        yield from self.wait.describe()
        yield self._running_family(())
