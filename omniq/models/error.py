"""The TaskError record: how one attempt of a task failed."""

from __future__ import annotations

import traceback as _tb
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from omniq.errors import ValidationError
from omniq.models._fields import aware, non_negative_int

__all__ = ["TaskError", "exception_text", "format_traceback", "storable_text"]


def _text(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise ValidationError(attribute.name, f"expected a string, got {value!r}")


@attrs.frozen(kw_only=True)
class TaskError:
    """How a task failed: exception type, message, traceback, which attempt, when,
    and whether the task was to be run again (``retryable``).

    Results and attempt records carry one (``TaskResult.task_error``,
    ``TaskAttempt.error``). ``to_dict``/``from_dict`` round-trip it through JSON.
    """

    type: str = attrs.field(validator=_text)
    message: str = attrs.field(validator=_text)
    traceback: str | None = None
    attempt: int | None = attrs.field(default=None, validator=non_negative_int)
    at: datetime | None = attrs.field(default=None, validator=aware)
    retryable: bool = False

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        attempt: int | None = None,
        at: datetime | None = None,
        retryable: bool = False,
    ) -> TaskError:
        """Capture an exception (with its traceback)."""
        return cls(
            type=type(exc).__qualname__,
            message=storable_text(exception_text(exc) or type(exc).__qualname__),
            traceback=storable_text(format_traceback(exc)),
            attempt=attempt,
            at=at,
            retryable=retryable,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (``at`` as ISO 8601) that :meth:`from_dict` reads back."""
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "attempt": self.attempt,
            "at": None if self.at is None else self.at.isoformat(),
            "retryable": self.retryable,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskError:
        """The record of a mapping made by :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise ValidationError("error", f"expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {a.name for a in attrs.fields(cls)}
        if unknown:
            raise ValidationError("error", f"unknown key(s) {sorted(unknown)}")
        values = dict(data)
        at = values.get("at")
        if isinstance(at, str):
            try:
                values["at"] = datetime.fromisoformat(at)
            except ValueError:
                raise ValidationError("at", f"not an ISO 8601 datetime: {at!r}") from None
        return cls(**values)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def as_event_data(self) -> dict[str, str]:
        """What a failure event records of it besides ``error``: the exception type.

        Never the traceback: events are the long-kept audit trail and carry
        no tracebacks (the final failure's is in the task's result, each
        attempt's in its attempt record).
        """
        return {"error_type": self.type}


#: Formatted tracebacks by where they were raised (see :func:`format_traceback`).
_TRACEBACKS: dict[tuple[Any, ...], str] = {}
_TRACEBACK_CACHE_SIZE = 256


def format_traceback(exc: BaseException) -> str:
    """``traceback.format_exception(exc)``, its stack part remembered per raising site.

    Formatting a stack reads source lines and re-parses them (about a
    millisecond per exception); when a downstream outage makes every task
    fail at the same place, that part is the same each time, so it is made
    once. The exception line (type and message) is formatted every time.
    """
    tb = exc.__traceback__
    if tb is None or exc.__cause__ is not None or exc.__context__ is not None:
        return "".join(_tb.format_exception(exc))
    key = tuple((frame.f_code, lineno) for frame, lineno in _tb.walk_tb(tb))
    stack = _TRACEBACKS.get(key)
    if stack is None:
        stack = "Traceback (most recent call last):\n" + "".join(_tb.extract_tb(tb).format())
        if len(_TRACEBACKS) >= _TRACEBACK_CACHE_SIZE:
            _TRACEBACKS.pop(next(iter(_TRACEBACKS)))
        _TRACEBACKS[key] = stack
    return stack + "".join(_tb.format_exception_only(exc))


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it failed: a task's exception is the user's
    object, and its ``__str__`` may raise (or return something not a str)."""
    try:
        text = str(exc)
    except Exception as failure:
        return f"<str() of {type(exc).__qualname__} failed: {type(failure).__qualname__}>"
    return text if type(text) is str else str.__str__(text)


def storable_text(text: str) -> str:
    """``text`` with lone surrogates and NULs escaped, so any error message can be stored."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
