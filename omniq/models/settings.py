"""Settings: the tunables of queue, worker and storage, with safe defaults."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, Literal

import attrs

from omniq.errors import ValidationError
from omniq.models._fields import check_utf8, name_str, non_negative_duration, non_negative_int
from omniq.models.rules import check_settings

__all__ = ["DEFAULT_HEARTBEATS_PER_LEASE", "Settings", "evolve_settings"]

#: Left unset, ``heartbeat_interval`` is ``lease_duration`` divided by this.
DEFAULT_HEARTBEATS_PER_LEASE = 4

#: A PostgreSQL schema OmniQ may use: a plain identifier (no quoting needed), not ``pg_*``.
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _schema_name(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _SCHEMA_NAME.fullmatch(value):
        raise ValidationError(
            attribute.name,
            f"{value!r} is not a schema name OmniQ accepts "
            "(letters, digits and underscores, not starting with a digit, at most 63)",
        )
    if value.lower().startswith("pg_") or value.lower() == "information_schema":
        raise ValidationError(attribute.name, f"{value!r} is reserved by PostgreSQL")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: timedelta) -> None:
    if not isinstance(value, timedelta):
        raise ValidationError(attribute.name, f"expected a timedelta, got {value!r}")
    if value <= timedelta(0):
        raise ValidationError(attribute.name, f"must be positive, got {value}")


def _number_in(low: float, high: float | None = None) -> Any:
    """Validator: a finite real number of at least ``low`` (and at most ``high``)."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(attribute.name, f"expected a number, got {value!r}")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ValidationError(attribute.name, f"must be {bounds}, got {value!r}")

    return check


def _one_of(*choices: str) -> Any:
    """Validator: one of ``choices``."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValidationError(attribute.name, f"must be one of {list(choices)}, got {value!r}")

    return check


def _flag(_inst: object, attribute: attrs.Attribute[Any], value: bool | None) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValidationError(attribute.name, f"expected True or False, got {value!r}")


def _positive_pages(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(attribute.name, f"expected a positive integer, got {value!r}")


def _signing_key(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(attribute.name, f"expected a string, got {type(value).__name__}")
    if not value:
        # An empty key would silently turn signing off.
        raise ValidationError(attribute.name, "must not be empty (None turns signing off)")
    check_utf8(value, attribute.name)


def _queue_name(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    name_str(_inst, attribute, value)
    check_utf8(value, attribute.name)


def _positive_or_none(
    _inst: object, attribute: attrs.Attribute[Any], value: timedelta | None
) -> None:
    if value is not None:
        _positive(_inst, attribute, value)


@attrs.frozen(kw_only=True)
class Settings:
    """Defaults applied where a task or call does not say otherwise."""

    default_queue: str = attrs.field(default="default", validator=_queue_name)
    default_timeout: timedelta | None = attrs.field(
        default=timedelta(minutes=30), validator=non_negative_duration
    )
    #: Retries of a failing task (3, as in the seed's schema); 0 fails at the first error.
    default_max_retries: int = attrs.field(default=3, validator=non_negative_int)
    default_retry_delay: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=non_negative_duration
    )
    default_result_ttl: timedelta | None = attrs.field(
        default=timedelta(days=1), validator=non_negative_duration
    )
    default_task_ttl: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    event_retention: timedelta | None = attrs.field(
        default=timedelta(days=7), validator=non_negative_duration
    )
    finished_task_retention: timedelta | None = attrs.field(
        default=timedelta(days=7), validator=non_negative_duration
    )
    #: How many times a task that was running when its worker died (lease lost)
    #: is run again before it fails with a ``WorkerLost`` error. Separate from
    #: ``max_retries``; a claimed task that never started costs nothing.
    crash_retries: int = attrs.field(default=2, validator=non_negative_int)
    lease_duration: timedelta = attrs.field(default=timedelta(seconds=60), validator=_positive)
    #: Default: a quarter of ``lease_duration`` (15 s for the default 60 s lease).
    #: Rule: at most a third of it (see :mod:`omniq.models.rules`).
    heartbeat_interval: timedelta = attrs.field(
        default=attrs.Factory(
            lambda self: self.lease_duration / DEFAULT_HEARTBEATS_PER_LEASE, takes_self=True
        ),
        validator=_positive,
    )
    #: Retry delay = retry_delay * retry_backoff ** retry_count, capped, +/- jitter.
    retry_backoff: float = attrs.field(default=2.0, validator=_number_in(1.0))
    retry_jitter: float = attrs.field(default=0.1, validator=_number_in(0.0, 1.0))
    max_retry_delay: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    busy_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    sqlite_synchronous: Literal["NORMAL", "FULL"] = attrs.field(
        default="NORMAL", validator=_one_of("NORMAL", "FULL")
    )
    #: SQLite: cap the database file at this many pages (``PRAGMA max_page_count``,
    #: pages of 4 KiB by default); past it writes raise :class:`StorageFull`.
    sqlite_max_page_count: int | None = attrs.field(default=None, validator=_positive_pages)
    #: PostgreSQL: how long one statement may wait for the server's reply (asyncpg's
    #: ``command_timeout``); past it the call raises :class:`DatabaseUnavailable`, so a
    #: server that stops answering (connections open, nothing back) cannot hold a
    #: caller, a worker or its shutdown for good. None: wait forever. Schema
    #: migrations (``omniq db upgrade``) run without it.
    server_timeout: timedelta | None = attrs.field(
        default=timedelta(seconds=60), validator=_positive_or_none
    )
    #: None means: on for SQLite files, off for servers.
    auto_migrate: bool | None = attrs.field(default=None, validator=_flag)
    #: How long a write keeps retrying (jittered backoff) while another process holds
    #: the SQLite write lock past ``busy_timeout``; then :class:`DatabaseBusy`.
    lock_deadline: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    serializer: str = attrs.field(default="json", validator=_one_of("json", "pickle"))
    allow_pickle: bool = attrs.field(default=False, validator=_flag)
    #: Sign argument payloads with HMAC-SHA256; payloads that do not verify are refused.
    signing_key: str | None = attrs.field(default=None, repr=False, validator=_signing_key)
    #: Copy task arguments into ``enqueued`` events (off: events carry ids and names only).
    log_arguments: bool = attrs.field(default=False, validator=_flag)
    #: PostgreSQL: the schema holding every OmniQ table, index, trigger function and
    #: OmniQ's version table (created if missing); None: the connection's default
    #: schema. SQLite refuses it (:class:`~omniq.errors.ConfigurationError`).
    db_schema: str | None = attrs.field(default=None, validator=_schema_name)

    def __attrs_post_init__(self) -> None:
        check_settings(self)


def evolve_settings(settings: Settings, **changes: Any) -> Settings:
    """``attrs.evolve(settings, **changes)``; a default heartbeat follows a new lease.

    When ``lease_duration`` changes and ``heartbeat_interval`` does not, a
    heartbeat at its default (a quarter of the old lease) becomes a quarter
    of the new one, as if the settings had been built with the new lease.
    """
    if (
        "lease_duration" in changes
        and "heartbeat_interval" not in changes
        and settings.heartbeat_interval == settings.lease_duration / DEFAULT_HEARTBEATS_PER_LEASE
    ):
        changes["heartbeat_interval"] = changes["lease_duration"] / DEFAULT_HEARTBEATS_PER_LEASE
    return attrs.evolve(settings, **changes)
