"""OmniQ's typed errors: one root, specific subclasses.

Driver errors are translated into these at the repository boundary, so
callers never need to import SQLAlchemy or a driver to handle failures.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ConfigurationError",
    "DatabaseBusy",
    "DatabaseClosed",
    "DatabaseError",
    "DatabaseMigrated",
    "DatabaseUnavailable",
    "DuplicateTask",
    "InvalidRow",
    "InvalidTransition",
    "LeaseLost",
    "MigrationRefused",
    "NoCurrentTask",
    "OmniQError",
    "ScheduleNotFound",
    "SchemaOutOfDate",
    "SerializationError",
    "StorageFull",
    "SyncInAsyncContext",
    "TaskNotFound",
    "UnsafePayload",
    "ValidationError",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WrongDatabase",
]


class OmniQError(Exception):
    """Root of every error OmniQ raises on purpose."""


class ValidationError(OmniQError, ValueError):
    """A value given to OmniQ is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ConfigurationError(OmniQError, ValueError):
    """A setting, URL or environment variable is invalid or unsupported.

    ``fields`` names the settings involved when a rule between them is broken
    (e.g. ``("heartbeat_interval", "lease_duration")``); ``rule`` states it.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = (), rule: str | None = None):
        self.fields = fields
        self.rule = rule
        super().__init__(message)


class SerializationError(OmniQError, ValueError):
    """A payload, result or callable cannot be serialized or deserialized."""


class UnsafePayload(SerializationError):
    """A payload needs an unsafe serializer (pickle) that was not enabled."""


class TaskNotFound(OmniQError, LookupError):
    """No task with that id exists, or a function reference is not runnable."""


class ScheduleNotFound(OmniQError, LookupError):
    """No schedule with that id exists."""


class DuplicateTask(OmniQError):
    """A live task with the same unique key (or id) already exists."""

    def __init__(self, message: str, existing_id: str | None = None) -> None:
        self.existing_id = existing_id
        super().__init__(message)


class InvalidTransition(OmniQError):
    """A state change was asked of a record that is not in the expected state."""


class LeaseLost(InvalidTransition):
    """The worker no longer owns the task: its lease expired or was taken over."""


class InvalidRow(OmniQError):
    """A stored row cannot be read (unknown enum value, malformed JSON, ...)."""


class SchemaOutOfDate(OmniQError):
    """The database schema is behind (or ahead of) this version of OmniQ."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            f"database schema is at revision {current or '<empty>'} but this OmniQ needs "
            f"{head}; run `omniq db upgrade` (or `alembic upgrade head`), "
            "or enable auto_migrate"
        )


class DatabaseError(OmniQError):
    """The database failed in a way OmniQ could not absorb."""


class DatabaseBusy(DatabaseError):
    """The database stayed locked by another writer past the configured deadline."""


class StorageFull(DatabaseError):
    """The database is full (disk or size limit); nothing of the failed write was kept."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached (connection refused or lost, server restarting)."""


class DatabaseClosed(DatabaseError):
    """The services (storage) were closed: open them again, or use a new handle.

    Raised by every read or write of a closed storage, on every engine, and by
    a worker whose storage is closed (it cannot work: it stops with this error).
    """


class SyncInAsyncContext(OmniQError, RuntimeError):
    """A sync API was called from inside a running event loop."""


class WorkflowNotFound(OmniQError, LookupError):
    """No workflow has that id."""


class WorkflowFailed(OmniQError):
    """A workflow's result cannot be given: a member it needs did not complete."""


class NoCurrentTask(OmniQError, LookupError):
    """``omniq.current_task()`` was called outside a task run by a worker."""


class WrongDatabase(ConfigurationError):
    """A connection handed to OmniQ is not on OmniQ's database (enqueue in a transaction)."""


class DatabaseMigrated(OmniQError):
    """This database's queue was moved to another database by ``omniq migrate-db``.

    ``target`` is where it went (its URL without the password); ``migrated_at``
    when the migration started. Workers of this database claim nothing; clear
    the flag with ``omniq migrate-db --unflag --from URL`` to use it again.
    """

    def __init__(self, target: str, migrated_at: datetime | None = None) -> None:
        self.target = target
        self.migrated_at = migrated_at
        when = f" on {migrated_at.isoformat()}" if migrated_at is not None else ""
        super().__init__(
            f"this OmniQ database was migrated to {target}{when}: it is read-only, so "
            "point OMNIQ_DATABASE_URL at the new database (or clear the flag with "
            "`omniq migrate-db --unflag --from URL`)"
        )


class MigrationRefused(OmniQError):
    """``omniq migrate-db`` cannot start or go on; the message says why and what to do.

    E.g. the source is not at this OmniQ's head revision, the target already
    holds other OmniQ data, or tasks still run on the source.
    """
