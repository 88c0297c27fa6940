"""The ``omniq`` command's output (tables, records, JSON) and argument checks."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from omniq.config import parse_duration
from omniq.errors import ConfigurationError

__all__ = ["CLIError", "duration_arg", "emit", "json_arg", "plain", "record", "table"]


class CLIError(Exception):
    """A one-line error for the user, with an exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --- output ---------------------------------------------------------------------


def plain(value: Any) -> Any:
    """JSON-ready form of records, datetimes, durations and enums."""
    if attrs.has(type(value)):
        return {k: plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def cell(value: Any) -> str:
    """One table cell (long text shortened)."""
    value = plain(value)
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if len(value) <= 60 else value[:57] + "..."
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)  # payload types: UUID, sets...
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """An aligned text table."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line.rstrip()]
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else ``human()``."""
    if args.json:
        print(json.dumps(plain(data), indent=2, ensure_ascii=False, default=str))
    else:
        print(human())


def record(obj: Any) -> str:
    """A record as aligned ``key  value`` lines."""
    data = plain(obj)
    width = max(len(k) for k in data) if data else 0
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in data.items())


# --- argument parsing ------------------------------------------------------------------


def json_arg(text: str, what: str, kind: type) -> Any:
    """Parse a JSON command-line argument of the given type."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(
            f"{what}: not valid JSON ({exc.msg} at column {exc.colno}): {text!r}"
        ) from None
    if not isinstance(value, kind):
        raise CLIError(f"{what}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def duration_arg(text: str, what: str) -> timedelta:
    """Parse a duration argument such as ``30s`` or ``1h`` (never negative)."""
    if text.strip().startswith("-"):
        raise CLIError(f"{what}: a duration cannot be negative, got {text!r}")
    try:
        value = parse_duration(text, what)
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None
    if value is None:
        raise CLIError(f"{what}: a duration is required, got {text!r}")
    return value
