"""Settings checked at the door: the rules between settings and worker options.

Each field is checked on its own where it is declared (a positive lease, a
non-negative retry count...). These are the rules that involve several
settings, or worker options beside the settings. A broken rule raises
:class:`~omniq.errors.ConfigurationError` naming the fields (``.fields``) and
the rule (``.rule``), whether the values came from keyword arguments, the
environment, a configuration file, ``AsyncOmniQ(worker={...})`` or the
``omniq worker`` options.

The rules:

- ``heartbeat_interval <= lease_duration / 3``: a lease outlives two missed
  heartbeats, so a healthy but busy worker never loses its own tasks (a
  10 s heartbeat with a 3 s lease fails a healthy 8 s task as ``WorkerLost``).
  Left unset, ``heartbeat_interval`` is a quarter of ``lease_duration``.
- Retention (``default_result_ttl``, ``default_task_ttl``,
  ``event_retention``, ``finished_task_retention``) is positive or ``None``
  (keep forever): zero would delete results and events, or expire tasks, as
  soon as they are written.
- ``concurrency`` is an integer of at least 1; ``prefetch`` is ``None``
  (adaptive) or an integer of at least 0.
- ``poll_interval``, ``maintenance_interval`` and ``scheduler_interval`` are
  positive (zero would spin the loop) and at most one day (longer is a unit
  mistake: the loop would look dead); ``grace_period`` is not negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from omniq.errors import ConfigurationError
from omniq.models._fields import check_utf8, is_name

if TYPE_CHECKING:
    from omniq.models.settings import Settings

__all__ = [
    "HEARTBEATS_PER_LEASE",
    "RETENTION_FIELDS",
    "WORKER_INTERVALS",
    "check_settings",
    "check_worker_options",
    "queue_names",
]

#: A lease lasts at least this many heartbeat intervals.
HEARTBEATS_PER_LEASE = 3

#: Settings that say how long finished things are kept (None: forever).
RETENTION_FIELDS = (
    "default_result_ttl",
    "default_task_ttl",
    "event_retention",
    "finished_task_retention",
)

#: Worker loop intervals: positive, at most a day.
WORKER_INTERVALS = ("poll_interval", "maintenance_interval", "scheduler_interval")
_LONGEST_INTERVAL = timedelta(days=1)


def _show(value: timedelta | float) -> str:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return f"{seconds:g}s"


def check_settings(settings: Settings) -> None:
    """Raise :class:`ConfigurationError` if ``settings`` break a rule between fields."""
    lease, heartbeat = settings.lease_duration, settings.heartbeat_interval
    if heartbeat * HEARTBEATS_PER_LEASE > lease:
        raise ConfigurationError(
            f"heartbeat_interval ({_show(heartbeat)}) is too long for lease_duration "
            f"({_show(lease)}): the rule is heartbeat_interval <= lease_duration / "
            f"{HEARTBEATS_PER_LEASE} (here at most {_show(lease / HEARTBEATS_PER_LEASE)}), "
            "so that a lease outlives two missed heartbeats",
            fields=("heartbeat_interval", "lease_duration"),
            rule=f"heartbeat_interval <= lease_duration / {HEARTBEATS_PER_LEASE}",
        )
    for name in RETENTION_FIELDS:
        value = getattr(settings, name)
        if value is not None and value <= timedelta(0):
            raise ConfigurationError(
                f"{name} ({_show(value)}): retention must be positive, or none to keep "
                "forever (zero would delete or expire at once)",
                fields=(name,),
                rule=f"{name} > 0 or None",
            )


#: The most tasks a worker runs (or holds ahead) at once: claims ask the database
#: for that many rows, and a count past 64 bits was refused by every claim.
MAX_CONCURRENCY = 1_000_000


def check_worker_options(settings: Settings, options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` if worker ``options`` are invalid beside ``settings``.

    ``options`` holds what a worker is built with (``concurrency``,
    ``prefetch``, ``poll_interval``...); keys it does not know are ignored,
    as are values of None where None means a default.
    """
    del settings  # the settings' own rules were checked when they were built
    concurrency = options.get("concurrency", options.get("max_workers"))
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise ConfigurationError(
            f"concurrency must be an integer from 1 to {MAX_CONCURRENCY:,}, got {concurrency!r}",
            fields=("concurrency",),
            rule=f"1 <= concurrency <= {MAX_CONCURRENCY}",
        )
    prefetch = options.get("prefetch")
    if prefetch is not None and (
        isinstance(prefetch, bool)
        or not isinstance(prefetch, int)
        or not 0 <= prefetch <= MAX_CONCURRENCY
    ):
        raise ConfigurationError(
            f"prefetch must be None (adaptive) or an integer from 0 to {MAX_CONCURRENCY:,}, "
            f"got {prefetch!r}",
            fields=("prefetch",),
            rule=f"prefetch is None or 0 <= prefetch <= {MAX_CONCURRENCY}",
        )
    gc_freeze = options.get("gc_freeze", False)
    if not isinstance(gc_freeze, bool):
        raise ConfigurationError(
            f"gc_freeze must be True or False, got {gc_freeze!r}",
            fields=("gc_freeze",),
            rule="gc_freeze is a bool",
        )
    for name in WORKER_INTERVALS:
        value = options.get(name)
        if value is None:
            continue
        seconds = _seconds(value, name)
        if not 0 < seconds <= _LONGEST_INTERVAL.total_seconds():
            raise ConfigurationError(
                f"{name} must be positive and at most a day, got {_show(seconds)}",
                fields=(name,),
                rule=f"0 < {name} <= 1 day",
            )
    worker_id = options.get("worker_id")
    if worker_id is not None:
        if not is_name(worker_id):
            raise ConfigurationError(
                f"worker_id must be 1-200 characters without NUL, got {worker_id!r}",
                fields=("worker_id",),
                rule="worker_id is a name",
            )
        check_utf8(worker_id, "worker_id")
    metrics = options.get("metrics")
    if metrics is not None and not callable(getattr(metrics, "attach", None)):
        raise ConfigurationError(
            f"metrics must be a WorkerMetrics (omniq.metrics), got {type(metrics).__name__}",
            fields=("metrics",),
            rule="metrics has attach()",
        )
    modules = options.get("allow_modules")
    if isinstance(modules, str | bytes):
        raise ConfigurationError(
            f"allow_modules: expected a list of module names, got the string {modules!r} "
            f"(write [{modules!r}])",
            fields=("allow_modules",),
            rule="allow_modules is a list",
        )
    grace = options.get("grace_period")
    if grace is not None and _seconds(grace, "grace_period") < 0:
        raise ConfigurationError(
            f"grace_period must not be negative, got {_show(_seconds(grace, 'grace_period'))}",
            fields=("grace_period",),
            rule="grace_period >= 0",
        )


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name}: expected seconds or a timedelta, got {value!r}", fields=(name,)
        )
    return float(value)


def queue_names(value: object, field: str = "queues") -> list[str] | None:
    """The queue names of a ``queues`` option, checked; None (or empty) is every queue.

    A bare string is refused rather than split into letters (``"emails"``
    would serve queues ``e``, ``m``...).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise ConfigurationError(
            f"{field}: expected a list of queue names, got the string {value!r} "
            f"(write [{value!r}])",
            fields=(field,),
        )
    try:
        names = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigurationError(
            f"{field}: expected a list of queue names, got {type(value).__name__}",
            fields=(field,),
        ) from None
    for name in names:
        if not is_name(name):
            raise ConfigurationError(
                f"{field}: each queue name must be 1-200 characters without NUL, got {name!r}",
                fields=(field,),
            )
        check_utf8(name, field)
    return names or None
