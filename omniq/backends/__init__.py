"""Seed-compatible entry points: backends, components and factory functions.

These names come from OmniQ's original plan (the seed). They are thin: the
backends are in :mod:`omniq.backends.sqlite`, the factory functions in
:mod:`omniq.backends.factory`, the components in :mod:`omniq.storage` and
:mod:`omniq.workers`; every call goes to the same services as
:class:`omniq.OmniQ`.
"""

from __future__ import annotations

from omniq.backends.factory import (
    create_sqlite_backend,
    create_sqlite_components_from_config,
    create_sqlite_event_storage,
    create_sqlite_result_storage,
    create_sqlite_task_queue,
    create_sqlite_worker,
    get_event_storage,
    get_result_storage,
    get_task_queue,
    get_worker,
)
from omniq.backends.sqlite import SQLBackend, SQLiteBackend

__all__ = [
    "SQLBackend",
    "SQLiteBackend",
    "create_sqlite_backend",
    "create_sqlite_components_from_config",
    "create_sqlite_event_storage",
    "create_sqlite_result_storage",
    "create_sqlite_task_queue",
    "create_sqlite_worker",
    "get_event_storage",
    "get_result_storage",
    "get_task_queue",
    "get_worker",
]
