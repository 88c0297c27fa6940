"""attrs validators and converters shared by the models."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

import attrs

from omniq._time import require_aware
from omniq.errors import SerializationError, ValidationError
from omniq.models.enums import (
    EventLevel,
    EventType,
    MisfirePolicy,
    ResultStatus,
    ScheduleStatus,
    ScheduleType,
    TaskStatus,
)

E = TypeVar("E", bound=Enum)

_ZERO = timedelta(0)


def aware(_inst: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    """Validator: a datetime (or None) must be timezone-aware."""
    if value is None or (value.__class__ is datetime and value.tzinfo is UTC):
        return  # the common case, checked cheaply (rows read back are UTC)
    require_aware(value, attribute.name)


def non_negative_duration(
    _inst: object, attribute: attrs.Attribute[Any], value: timedelta | None
) -> None:
    """Validator: a duration (or None) must be a non-negative timedelta."""
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise ValidationError(attribute.name, f"expected a timedelta, got {value!r}")
    if value < _ZERO:
        raise ValidationError(attribute.name, f"must be non-negative, got {value}")


def non_negative_int(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """Validator: an int (or None) must be >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(attribute.name, f"expected an integer, got {value!r}")
    if value < 0:
        raise ValidationError(attribute.name, f"must be non-negative, got {value}")
    if value >= 2**31:  # stored in 32-bit INTEGER columns
        raise ValidationError(attribute.name, f"must be below 2**31, got {value}")


def bounded_int(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """Validator: an int that fits a 64-bit column."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(attribute.name, f"expected an integer, got {value!r}")
    if not -(2**63) <= value < 2**63:
        raise ValidationError(attribute.name, f"out of range: {value}")


def is_name(value: object) -> bool:
    """True for a name: a string of 1-200 characters without NUL (queues, workers...)."""
    return isinstance(value, str) and 0 < len(value) <= 200 and "\x00" not in value


def name_str(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator: a non-empty string of at most 200 characters without NUL."""
    if not isinstance(value, str):
        raise ValidationError(attribute.name, f"expected a string, got {value!r}")
    if not is_name(value):
        raise ValidationError(
            attribute.name, f"must be 1-200 characters without NUL, got {value!r}"
        )


#: The longest record id: the id columns are ``VARCHAR(64)``.
MAX_ID = 64
#: The longest indexed key (``unique_key``, a schedule's ``name``), in UTF-8 bytes:
#: PostgreSQL's B-tree index takes at most about 2,700 bytes per entry.
MAX_KEY_BYTES = 2000


def id_str(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """Validator: a record id, 1-64 characters without NUL."""
    if not isinstance(value, str):
        raise ValidationError(attribute.name, f"expected a string, got {value!r}")
    if not value or len(value) > MAX_ID or "\x00" in value:
        raise ValidationError(
            attribute.name, f"must be 1-{MAX_ID} characters without NUL, got {value!r}"
        )


def lookup_key(value: object, name: str) -> None:
    """An argument naming what to look up (an id, a queue or worker name): None or a
    string without NUL.

    Checked before the database sees it, so every engine answers alike (SQLite
    would compare an integer as text and refuse a list while binding it).
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(name, f"expected a string, got {type(value).__name__} {value!r:.60}")
    if "\x00" in value:  # never stored on any engine; PostgreSQL cannot even compare it
        raise ValidationError(name, f"must not contain NUL (\\x00), got {value!r:.60}")


def optional_id(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Validator: None or a record id (1-64 characters without NUL)."""
    if value is not None:
        id_str(_inst, attribute, value)


def optional_key(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Validator: None or an indexed key: a string without NUL of at most 2,000 UTF-8 bytes."""
    optional_str(_inst, attribute, value)
    if value is not None and len(value) * 4 > MAX_KEY_BYTES:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            raise ValidationError(
                attribute.name, f"must be at most {MAX_KEY_BYTES} bytes in UTF-8, got {size}"
            )


def optional_str(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Validator: None or a string without NUL characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(attribute.name, f"expected a string, got {value!r}")
    if "\x00" in value:
        raise ValidationError(attribute.name, "must not contain NUL characters")


def finite_float(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Validator: None or a finite, non-negative number."""
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValidationError(attribute.name, f"expected a finite number, got {value!r}")


def enum_converter(enum_cls: type[E], field: str) -> Callable[[Any], E]:
    """Converter: accept an enum member or its string value; reject others naming ``field``."""

    def convert(value: Any) -> E:
        if value.__class__ is enum_cls:
            return value
        try:
            return enum_cls(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum_cls)
            raise ValidationError(
                field, f"unknown {enum_cls.__name__} {value!r} (expected one of: {allowed})"
            ) from None

    return convert


# Named converters for the enum fields: the attrs mypy plugin accepts named
# functions as converters, not the closures ``enum_converter`` returns.
_task_status = enum_converter(TaskStatus, "status")
_result_status = enum_converter(ResultStatus, "status")
_event_type = enum_converter(EventType, "event_type")
_event_level = enum_converter(EventLevel, "level")
_schedule_type = enum_converter(ScheduleType, "schedule_type")
_schedule_status = enum_converter(ScheduleStatus, "status")
_misfire_policy = enum_converter(MisfirePolicy, "misfire_policy")


def to_task_status(value: Any) -> TaskStatus:
    """Converter: a TaskStatus or its string value."""
    return _task_status(value)


def to_result_status(value: Any) -> ResultStatus:
    """Converter: a ResultStatus or its string value."""
    return _result_status(value)


def to_event_type(value: Any) -> EventType:
    """Converter: an EventType or its string value."""
    return _event_type(value)


def to_event_level(value: Any) -> EventLevel:
    """Converter: an EventLevel or its string value."""
    return _event_level(value)


def to_schedule_type(value: Any) -> ScheduleType:
    """Converter: a ScheduleType or its string value."""
    return _schedule_type(value)


def to_schedule_status(value: Any) -> ScheduleStatus:
    """Converter: a ScheduleStatus or its string value."""
    return _schedule_status(value)


def to_misfire_policy(value: Any) -> MisfirePolicy:
    """Converter: a MisfirePolicy or its string value."""
    return _misfire_policy(value)


def str_tuple(value: Any) -> tuple[str, ...]:
    """Converter: a sequence of strings (or None) -> tuple of strings."""
    if value is None:
        return ()
    cls = value.__class__
    if (
        cls is not tuple
        and cls is not list
        and (isinstance(value, str) or not isinstance(value, Sequence | set | frozenset))
    ):
        raise ValidationError("tags", f"expected a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ValidationError("tags", f"expected strings, got {item!r}")
    return items


def args_tuple(value: Any) -> tuple[Any, ...]:
    """Converter: positional arguments (a list or tuple) -> tuple."""
    if value is None:
        return ()
    cls = value.__class__
    if cls is tuple:
        return value  # type: ignore[no-any-return]
    if cls is list:
        return tuple(value)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ValidationError("func_args", f"expected a list or tuple, got {type(value).__name__}")
    return tuple(value)


def kwargs_dict(value: Any) -> dict[str, Any]:
    """Converter: keyword arguments (a mapping with str keys) -> dict."""
    if value is None:
        return {}
    if value.__class__ is not dict and not isinstance(value, Mapping):
        raise ValidationError("func_kwargs", f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError("func_kwargs", f"keys must be strings, got {key!r}")
    return dict(value)


def check_utf8(text: str, field: str) -> None:
    """Raise :class:`SerializationError` naming ``field`` if ``text`` is not valid UTF-8 text.

    A lone surrogate (e.g. a file name decoded with ``surrogateescape``) can be
    held by a Python str but stored by no database.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"{field}: text cannot be stored as UTF-8 ({exc.reason}: "
            f"{exc.object[exc.start : exc.end]!r} at position {exc.start})"
        ) from None


def check_utf8_within(value: Any, field: str) -> None:
    """:func:`check_utf8` on every string in ``value`` (JSON data: lists, dicts and their keys)."""
    if isinstance(value, str):
        check_utf8(value, field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_utf8_within(key, field)
            check_utf8_within(item, field)
    elif isinstance(value, list | tuple):
        for item in value:
            check_utf8_within(item, field)
