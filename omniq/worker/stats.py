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
