"""What a worker tells a metrics collector: the hook interface (no metrics library here).

A :class:`~omniq.worker.Worker` built with ``metrics=`` calls these methods;
without it (the default) it calls nothing, so metrics cost nothing when off.
:class:`omniq.metrics.WorkerMetrics` (the ``metrics`` extra) implements them
with Prometheus counters and histograms.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from omniq.models import Task, TaskStatus

if TYPE_CHECKING:
    from omniq.worker.worker import Worker

__all__ = ["OUTCOMES", "WorkerMetricsHook", "outcome_of"]

#: The outcome of a finished attempt, as :meth:`WorkerMetricsHook.attempt_settled` names it.
OUTCOMES = ("completed", "failed", "cancelled", "retried")

_BY_STATUS = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.PENDING: "retried",
}


def outcome_of(status: TaskStatus) -> str | None:
    """The outcome an attempt that left its task in ``status`` had (None: not a settled one)."""
    return _BY_STATUS.get(status)


class WorkerMetricsHook(Protocol):
    """Receives a worker's per-attempt facts; every method must be cheap and thread-safe.

    Called from the worker's event loop, and :meth:`attempt_started` also from
    the thread-pool thread that starts a sync function.
    """

    def attach(self, worker: Worker) -> None:
        """``worker`` reports to this hook (called once, when it is built)."""

    def attempt_started(self, task: Task, now: datetime) -> None:
        """The task's function starts now (``now`` by the worker's clock for due times)."""

    def attempt_ended(self, task: Task, seconds: float) -> None:
        """The function of an attempt that started returned or raised after ``seconds``."""

    def attempt_settled(self, task: Task, outcome: str) -> None:
        """The attempt's outcome (one of :data:`OUTCOMES`) is committed."""
