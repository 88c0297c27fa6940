"""The seed's worker component (thin: OmniQ's :class:`omniq.worker.Worker`)."""

from __future__ import annotations

from omniq.workers.sqlite_worker import SQLiteWorker

__all__ = ["SQLiteWorker"]
