"""Log output for the ``omniq`` command: text or JSON lines, OmniQ's level, quiet drivers.

:func:`configure_logging` installs one handler on the root logger (stderr),
sets the level of the ``omniq`` loggers only, and keeps the drivers' debug
chatter (aiosqlite, asyncpg, SQLAlchemy statements) out at WARNING whatever
OmniQ's level is. Alembic's INFO lines pass, but OmniQ only lets Alembic
speak when a migration actually runs (see :mod:`omniq.db.migrate`).

``--log-format json`` (or ``OMNIQ_LOG_FORMAT=json``) writes one JSON object
per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
structured fields the record carries (``task_id``, ``func``, ``outcome``,
``duration``, ``worker_id``...) and ``traceback`` when there is one.
Applications that configure logging themselves can use :class:`JsonFormatter`
and :class:`TextFormatter` directly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "record_fields",
]

#: The formats :func:`configure_logging` knows.
LOG_FORMATS = ("text", "json")

#: Loggers of the libraries under OmniQ: their DEBUG/INFO lines (every statement,
#: every aiosqlite call) are not OmniQ's and stay out of ``--log-level debug``.
QUIET_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_STANDARD = frozenset(
    [
        *logging.LogRecord("x", logging.INFO, "x", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    ]
)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of ``record``: what was passed as ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[:1] != "_"}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the traceback if any (plain :mod:`logging`)."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (one line): time, level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(record_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["traceback"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str | int | None = None, fmt: str | None = None) -> None:
    """Log OmniQ's records at ``level`` to stderr as ``fmt`` ("text" or "json").

    ``None`` reads ``OMNIQ_LOG_LEVEL`` (default INFO) and ``OMNIQ_LOG_FORMAT``
    (default text). Calling it again replaces the handler it installed before
    (other handlers on the root logger are left alone). Raises ValueError for
    an unknown level or format.
    """
    level = level if level is not None else os.environ.get("OMNIQ_LOG_LEVEL") or "INFO"
    fmt = (fmt or os.environ.get("OMNIQ_LOG_FORMAT") or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(LOG_FORMATS)})")
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(
            f"unknown log level {level!r} (one of debug, info, warning, error, critical)"
        )
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("omniq")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "omniq"]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("omniq").setLevel(numeric)
    # Alembic says what it migrates at INFO (when OmniQ's level shows INFO);
    # omniq.db.migrate mutes its connection chatter when no migration runs.
    logging.getLogger("alembic").setLevel(max(numeric, logging.INFO))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
