"""The seed's storage components (thin: each fronts one OmniQ service)."""

from __future__ import annotations

from omniq.storage.sqlite_event import SQLiteEventStorage
from omniq.storage.sqlite_queue import SQLiteTaskQueue
from omniq.storage.sqlite_result import SQLiteResultStorage

__all__ = ["SQLiteEventStorage", "SQLiteResultStorage", "SQLiteTaskQueue"]
