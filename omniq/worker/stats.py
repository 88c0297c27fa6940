"""A snapshot of what a worker did."""

from __future__ import annotations

import attrs

__all__ = ["WorkerStats"]


@attrs.frozen(kw_only=True)
class WorkerStats:
    """A snapshot of what a worker did."""

    worker_id: str
    running: int
    completed: int
    failed: int
    retried: int
    cancelled: int
    lost: int
    uptime: float
    queues: tuple[str, ...] | None
    concurrency: int
    executor: str

    def summary(self) -> str:
        """``10 succeeded, 1 failed, 2 retried, 0 cancelled, 0 lost, 0 running in 12.3s``."""
        return (
            f"{self.completed} succeeded, {self.failed} failed, {self.retried} retried, "
            f"{self.cancelled} cancelled, {self.lost} lost, {self.running} running "
            f"in {self.uptime:.1f}s (worker {self.worker_id}, concurrency {self.concurrency}, "
            f"executor {self.executor})"
        )

    def __str__(self) -> str:
        return self.summary()
