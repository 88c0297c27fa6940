"""Configuration: one record, from keyword arguments, a dict, the environment or a file.

Environment variables (all optional):

==========================  =====================================================
``OMNIQ_DATABASE_URL``      engine URL (default: SQLite file in ``OMNIQ_BASE_DIR``)
``OMNIQ_PROJECT_NAME``      project name; the default database is ``<name>.db``
``OMNIQ_BASE_DIR``          directory of the default SQLite file (``omniq_data``)
``OMNIQ_QUEUES``            comma-separated queues a worker serves, in order
``OMNIQ_DEFAULT_TIMEOUT``   task timeout (``30``, ``30s``, ``5m``, ``1h``, ``none``)
``OMNIQ_MAX_RETRIES``       default max retries
``OMNIQ_RETRY_DELAY``       default first retry delay
``OMNIQ_RESULT_TTL``        how long results are kept
``OMNIQ_TASK_TTL``          default task TTL (``none``: tasks never expire)
``OMNIQ_EVENT_RETENTION``   how long events are kept (``none``: forever)
``OMNIQ_LEASE_DURATION``    worker lease duration
``OMNIQ_HEARTBEAT_INTERVAL``  lease renewal interval
``OMNIQ_CONCURRENCY``       worker concurrency
``OMNIQ_EXECUTOR``          ``async`` | ``thread`` | ``process``
``OMNIQ_SERIALIZER``        ``json`` (default) | ``pickle`` (needs allow_pickle)
``OMNIQ_ALLOW_PICKLE``      ``1`` to opt in to pickle payloads
``OMNIQ_LOG_LEVEL``         logging level of the ``omniq`` loggers
``OMNIQ_DB_SCHEMA``         PostgreSQL schema of OmniQ's tables (default: none)
``OMNIQ_SERVER_TIMEOUT``    PostgreSQL: longest wait for one reply (``60s``, ``none``)
``OMNIQ_LOG_FORMAT``        ``text`` or ``json`` log lines (the ``omniq`` command)
==========================  =====================================================
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from omniq.errors import ConfigurationError, OmniQError
from omniq.models.rules import check_worker_options
from omniq.models.settings import Settings

__all__ = [
    "EXECUTOR_KINDS",
    "EventStorageConfig",
    "OmniQConfig",
    "ResultStorageConfig",
    "TaskQueueConfig",
    "WorkerConfig",
    "parse_duration",
]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.I)

#: Settings fields that hold durations (they accept "30s", "5m", numbers...).
_DURATION_FIELDS = frozenset(a.name for a in attrs.fields(Settings) if "timedelta" in str(a.type))


#: How a worker runs sync functions: on threads of the loop's pool, a thread pool,
#: or child processes.
EXECUTOR_KINDS: tuple[str, ...] = ("async", "thread", "process")


def parse_duration(value: Any, field: str = "duration") -> timedelta | None:
    """``"30"``, ``"30s"``, ``"5m"``, ``"1.5h"``, ``"2d"``, numbers, timedelta, or none."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ConfigurationError(f"{field}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigurationError(f"{field}: must be non-negative, got {value!r}")
        return _timedelta_of(value, field)
    text = str(value).strip().lower()
    if text in ("", "none", "null", "off", "never"):
        return None
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(
            f"{field}: cannot read duration {value!r} (examples: 30, 30s, 5m, 1h, 2d, none)"
        )
    return _timedelta_of(float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()], field)


def _timedelta_of(value: float, field: str) -> timedelta:
    try:
        return timedelta(seconds=value)
    except (OverflowError, ValueError):  # too large, or NaN
        raise ConfigurationError(f"{field}: duration {value!r} seconds is out of range") from None


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{field}: expected true/false, got {value!r}")


def _queues(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        return None  # empty: not given (every queue), as on the command line
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(x).strip() for x in items if str(x).strip())
    if items and not names:
        # As `--queues ',,'`: separators alone name no queue (not "serve them all").
        raise ConfigurationError(
            f"queues: no queue name in {value!r} (leave it out to serve all)", fields=("queues",)
        )
    return names or None


def _concurrency(value: Any) -> int:
    return _int(value, "concurrency")


def _poll_interval(value: Any) -> float:
    return _seconds(value, "poll_interval")


@attrs.frozen(kw_only=True)
class TaskQueueConfig:
    """The seed's ``config.task_queue`` section (a view of :class:`OmniQConfig`)."""

    base_dir: str
    queues: tuple[str, ...] | None
    url: str | None = None


@attrs.frozen(kw_only=True)
class ResultStorageConfig:
    """The seed's ``config.result_storage`` section (a view of :class:`OmniQConfig`)."""

    base_dir: str
    result_ttl: timedelta | None


@attrs.frozen(kw_only=True)
class EventStorageConfig:
    """The seed's ``config.event_storage`` section (a view of :class:`OmniQConfig`)."""

    base_dir: str
    retention: timedelta | None


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """The seed's ``config.worker`` section (a view of :class:`OmniQConfig`)."""

    max_workers: int
    poll_interval: float
    worker_type: str


#: Keys of the seed's config sections -> OmniQConfig (or Settings) keys.
_SECTIONS: dict[str, dict[str, str]] = {
    "task_queue": {
        "base_dir": "base_dir",
        "queues": "queues",
        "url": "url",
        "database_url": "url",
        "max_retries": "default_max_retries",
        "retry_delay": "default_retry_delay",
        "task_ttl": "default_task_ttl",
    },
    "result_storage": {"base_dir": "base_dir", "result_ttl": "default_result_ttl"},
    "event_storage": {"base_dir": "base_dir", "retention": "event_retention"},
    "worker": {
        "max_workers": "concurrency",
        "concurrency": "concurrency",
        "poll_interval": "poll_interval",
        "worker_type": "executor",
        "executor": "executor",
    },
}


def _flatten_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the seed's sections (``task_queue: {base_dir: ...}``) as flat keys."""
    flat = {k: v for k, v in data.items() if k not in _SECTIONS}
    from_section: dict[str, str] = {}
    for section, names in _SECTIONS.items():
        values = data.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"{section}: expected a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in names:
                raise ConfigurationError(
                    f"unknown configuration key {section}.{key} (known: {', '.join(names)})"
                )
            name = names[key]
            if name in flat and flat[name] != value:
                where = from_section.get(name, name)
                raise ConfigurationError(
                    f"{section}.{key}: {value!r} conflicts with {where}: {flat[name]!r}"
                )
            if value is not None or name not in flat:
                flat[name] = value
                from_section[name] = f"{section}.{key}"
    if flat.get("base_dir", "") is None:
        flat.pop("base_dir")
    return flat


@attrs.frozen(kw_only=True)
class OmniQConfig:
    """Everything needed to open OmniQ: where the data lives, defaults, worker options."""

    project_name: str = "omniq"
    url: str | None = None
    base_dir: str = "omniq_data"
    queues: tuple[str, ...] | None = attrs.field(default=None, converter=_queues)
    settings: Settings = attrs.field(factory=Settings)
    concurrency: int = attrs.field(default=10, converter=_concurrency)
    executor: str = attrs.field(default="async")
    poll_interval: float = attrs.field(default=1.0, converter=_poll_interval)
    log_level: str | None = None

    @property
    def task_queue(self) -> TaskQueueConfig:
        """The seed's ``task_queue`` section."""
        return TaskQueueConfig(base_dir=self.base_dir, queues=self.queues, url=self.url)

    @property
    def result_storage(self) -> ResultStorageConfig:
        """The seed's ``result_storage`` section."""
        return ResultStorageConfig(
            base_dir=self.base_dir, result_ttl=self.settings.default_result_ttl
        )

    @property
    def event_storage(self) -> EventStorageConfig:
        """The seed's ``event_storage`` section."""
        return EventStorageConfig(base_dir=self.base_dir, retention=self.settings.event_retention)

    @property
    def worker(self) -> WorkerConfig:
        """The seed's ``worker`` section."""
        return WorkerConfig(
            max_workers=self.concurrency,
            poll_interval=self.poll_interval,
            worker_type=self.executor,
        )

    def __attrs_post_init__(self) -> None:
        check_worker_options(
            self.settings, {"concurrency": self.concurrency, "poll_interval": self.poll_interval}
        )

    @executor.validator
    def _check_executor(self, _attr: Any, value: str) -> None:
        if value not in EXECUTOR_KINDS:
            raise ConfigurationError(
                f"executor: unknown {value!r} (one of {', '.join(EXECUTOR_KINDS)})"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OmniQConfig:
        """Build from a mapping; settings may be nested under ``settings`` or top level.

        The seed's sections are read too: ``task_queue`` (``base_dir``,
        ``queues``, ``url``...), ``result_storage``, ``event_storage`` and
        ``worker`` (``max_workers``, ``poll_interval``, ``worker_type``).
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"configuration must be a mapping, got {type(data).__name__}")
        data = _flatten_sections(data)
        top = {a.name for a in attrs.fields(cls)} - {"settings"}
        setting_names = {a.name for a in attrs.fields(Settings)}
        aliases = {
            "database_url": "url",
            "max_retries": "default_max_retries",
            "retry_delay": "default_retry_delay",
            "result_ttl": "default_result_ttl",
            "task_ttl": "default_task_ttl",
            "timeout": "default_timeout",
        }
        kwargs: dict[str, Any] = {}
        settings: dict[str, Any] = dict(data.get("settings") or {})
        for key, value in data.items():
            if key == "settings":
                continue
            name = aliases.get(key, key)
            if name in top:
                kwargs[name] = value
            elif name in setting_names:
                settings[name] = value
            else:
                raise ConfigurationError(f"unknown configuration key {key!r}")
        try:
            return cls(settings=_settings(settings), **kwargs)
        except OmniQError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid configuration: {exc}") from exc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OmniQConfig:
        """Build from ``OMNIQ_*`` environment variables (see the module docstring)."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        mapping = {
            "OMNIQ_DATABASE_URL": "url",
            "OMNIQ_PROJECT_NAME": "project_name",
            "OMNIQ_BASE_DIR": "base_dir",
            "OMNIQ_QUEUES": "queues",
            "OMNIQ_DEFAULT_TIMEOUT": "default_timeout",
            "OMNIQ_MAX_RETRIES": "default_max_retries",
            "OMNIQ_RETRY_DELAY": "default_retry_delay",
            "OMNIQ_RESULT_TTL": "default_result_ttl",
            "OMNIQ_TASK_TTL": "default_task_ttl",
            "OMNIQ_EVENT_RETENTION": "event_retention",
            "OMNIQ_LEASE_DURATION": "lease_duration",
            "OMNIQ_HEARTBEAT_INTERVAL": "heartbeat_interval",
            "OMNIQ_SERIALIZER": "serializer",
            "OMNIQ_ALLOW_PICKLE": "allow_pickle",
            "OMNIQ_CONCURRENCY": "concurrency",
            "OMNIQ_EXECUTOR": "executor",
            "OMNIQ_POLL_INTERVAL": "poll_interval",
            "OMNIQ_LOG_LEVEL": "log_level",
            "OMNIQ_DB_SCHEMA": "db_schema",
            "OMNIQ_SERVER_TIMEOUT": "server_timeout",
        }
        for var, key in mapping.items():
            if var in env:
                data[key] = env[var]
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> OmniQConfig:
        """Build from a TOML or JSON file (an ``[omniq]`` table is used if present)."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read configuration file {file}: {exc}") from exc
        try:
            if file.suffix.lower() == ".json":
                data = json.loads(text)
            elif file.suffix.lower() == ".toml":
                data = tomllib.loads(text)
            else:
                raise ConfigurationError(f"{file}: use a .toml or .json configuration file")
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{file}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("omniq"), dict):
            data = data["omniq"]
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` reads back to an equal config."""
        settings = {}
        for a in attrs.fields(Settings):
            value = getattr(self.settings, a.name)
            settings[a.name] = value.total_seconds() if isinstance(value, timedelta) else value
        return {
            "project_name": self.project_name,
            "url": self.url,
            "base_dir": self.base_dir,
            "queues": list(self.queues) if self.queues else None,
            "concurrency": self.concurrency,
            "executor": self.executor,
            "poll_interval": self.poll_interval,
            "log_level": self.log_level,
            "settings": settings,
        }


def _settings(values: Mapping[str, Any]) -> Settings:
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key in _DURATION_FIELDS:
            clean[key] = parse_duration(value, key)
        elif key == "default_max_retries":
            clean[key] = _int(value, key)
        elif key == "allow_pickle":
            clean[key] = _bool(value, key)
        elif key in ("retry_backoff", "retry_jitter"):
            clean[key] = float(value)
        elif key == "auto_migrate":
            clean[key] = None if value is None else _bool(value, key)
        elif key == "db_schema":
            clean[key] = None if value is None or str(value).strip() == "" else str(value).strip()
        else:
            clean[key] = value
    for required in ("lease_duration", "heartbeat_interval", "busy_timeout", "max_retry_delay"):
        if required in clean and clean[required] is None:
            raise ConfigurationError(f"{required}: cannot be none")
    if "default_retry_delay" in clean and clean["default_retry_delay"] is None:
        clean["default_retry_delay"] = timedelta(0)
    return Settings(**clean)


def _seconds(value: Any, field: str) -> float:
    duration = parse_duration(value, field)
    if duration is None or duration <= timedelta(0):
        raise ConfigurationError(f"{field}: must be a positive duration, got {value!r}")
    return duration.total_seconds()


def _int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{field}: expected an integer, got {value!r}") from None
