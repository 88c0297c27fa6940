"""The Task record."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import attrs

from omniq._time import new_id, utcnow
from omniq.errors import ValidationError
from omniq.models._fields import (
    args_tuple,
    aware,
    bounded_int,
    kwargs_dict,
    name_str,
    non_negative_duration,
    non_negative_int,
    optional_str,
    str_tuple,
    to_task_status,
)
from omniq.models.enums import TaskStatus

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def func_ref(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Validator: a callable reference of the form ``package.module:qualname``."""
    if value is None and attribute.name != "func":
        return
    if not isinstance(value, str) or not _REF.match(value):
        raise ValidationError(
            attribute.name, f"expected a reference 'package.module:qualname', got {value!r}"
        )


def _default_status(task: Task) -> TaskStatus:
    return TaskStatus.WAITING if task.depends_on else TaskStatus.PENDING


def _default_expires(task: Task) -> datetime | None:
    # Bad types are left to the field validators, which name the field.
    if not isinstance(task.ttl, timedelta) or not isinstance(task.created_at, datetime):
        return None
    try:
        return task.created_at + task.ttl
    except OverflowError:
        raise ValidationError("ttl", f"{task.ttl} is too long (past the year 9999)") from None


def _renamed(field: str, exc: ValidationError) -> ValidationError:
    """``exc`` (raised by a shared converter) reported under ``field``."""
    return ValidationError(field, str(exc).removeprefix(f"{exc.field}: "))


def _dedupe(value: Any) -> tuple[str, ...]:
    try:
        return tuple(dict.fromkeys(str_tuple(value)))
    except ValidationError as exc:
        raise _renamed("depends_on", exc) from None


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not True and value is not False:
        raise ValidationError(attribute.name, f"expected True or False, got {value!r}")


def _callback_args(value: Any) -> tuple[Any, ...]:
    try:
        return args_tuple(value)
    except ValidationError as exc:
        raise _renamed("callback_args", exc) from None


@attrs.frozen(kw_only=True)
class Task:
    """A unit of work: a function reference, its arguments and its queue options.

    Records are immutable; change one with ``attrs.evolve``. ``expires_at`` is
    ``created_at + ttl`` unless given; ``status`` is ``waiting`` while
    ``depends_on`` names tasks, else ``pending``.
    """

    func: str = attrs.field(validator=func_ref)
    func_args: tuple[Any, ...] = attrs.field(default=(), converter=args_tuple)
    func_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=kwargs_dict)
    id: str = attrs.field(factory=new_id, validator=name_str)
    queue_name: str = attrs.field(default="default", validator=name_str)
    name: str | None = attrs.field(default=None, validator=optional_str)
    description: str | None = attrs.field(default=None, validator=optional_str)
    tags: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)
    priority: int = attrs.field(default=0, validator=bounded_int)
    created_at: datetime = attrs.field(factory=utcnow, validator=aware)
    run_at: datetime = attrs.field(
        default=attrs.Factory(lambda self: self.created_at, takes_self=True), validator=aware
    )
    ttl: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    expires_at: datetime | None = attrs.field(
        default=attrs.Factory(_default_expires, takes_self=True), validator=aware
    )
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_dedupe)
    status: TaskStatus = attrs.field(
        default=attrs.Factory(_default_status, takes_self=True),
        converter=to_task_status,
    )
    started_at: datetime | None = attrs.field(default=None, validator=aware)
    completed_at: datetime | None = attrs.field(default=None, validator=aware)
    callback: str | None = attrs.field(default=None, validator=func_ref)
    callback_args: tuple[Any, ...] = attrs.field(default=(), converter=_callback_args)

    retry_count: int = attrs.field(default=0, validator=non_negative_int)
    max_retries: int = attrs.field(default=0, validator=non_negative_int)
    retry_delay: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=non_negative_duration
    )
    result_ttl: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    store_result: bool = attrs.field(default=True, validator=_bool)

    timeout: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    unique_key: str | None = attrs.field(default=None, validator=optional_str)
    schedule_id: str | None = None
    scheduled_for: datetime | None = attrs.field(default=None, validator=aware)
    attempts: int = attrs.field(default=0, validator=non_negative_int)
    lease_token: str | None = None
    lease_expires_at: datetime | None = attrs.field(default=None, validator=aware)
    worker_id: str | None = None
    last_error: str | None = None
    cancel_requested: bool = False
    serializer: str = "json"
    #: Set when the stored payload could not be decoded; the args are then empty
    #: and the worker fails the task with this message instead of running it.
    payload_error: str | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.id in self.depends_on:
            raise ValidationError("depends_on", "a task cannot depend on itself")
        if self.timeout is not None and self.timeout == timedelta(0):
            raise ValidationError("timeout", "must be positive (or None for the default)")

    @property
    def is_final(self) -> bool:
        """True once the task reached completed, failed, cancelled or expired."""
        return self.status.is_final


_TASK_FIELDS = tuple(f.name for f in attrs.fields(Task))
_STATUS_BY_VALUE = {s.value: s for s in TaskStatus}
_INT_FIELDS = ("retry_count", "max_retries", "attempts")
_INSTANT_FIELDS = (
    "created_at",
    "run_at",
    "expires_at",
    "started_at",
    "completed_at",
    "scheduled_for",
    "lease_expires_at",
)
_DURATION_FIELDS = ("ttl", "retry_delay", "result_ttl", "timeout")
_TEXT_FIELDS = ("name", "description", "unique_key", "serializer")
_set = object.__setattr__
_ZERO = timedelta(0)
_INT_LIMIT = 2**31  # the columns are 32-bit INTEGERs


def _names(value: Any) -> tuple[str, ...] | None:
    """A list of strings as a tuple; None when it is anything else."""
    if value.__class__ is not list:
        return None
    for item in value:
        if item.__class__ is not str:
            return None
    return tuple(value)


def _compile_setter() -> Any:
    """``build(values, status, tags, depends_on)``: a Task from values, no checks.

    Generated like attrs' own ``__init__`` (one line per field), so that
    building a record read back costs a few microseconds.
    """
    lines = ["def build(values, status, tags, depends_on):", "    self = _new(Task)"]
    lines.append("    s = _set.__get__(self)")
    given = {"status": "status", "tags": "tags", "depends_on": "depends_on"}
    for name in _TASK_FIELDS:
        value = f"values.get({name!r})" if name in _OPTIONAL_KEYS else f"values[{name!r}]"
        lines.append(f"    s({name!r}, {given.get(name, value)})")
    lines.append("    return self")
    namespace: dict[str, Any] = {"_new": object.__new__, "_set": _set, "Task": Task}
    exec("\n".join(lines), namespace)
    return namespace["build"]


#: Fields rows may leave out (everything else is a column or the decoded payload).
_OPTIONAL_KEYS = frozenset({"payload_error"})
_build = _compile_setter()


def _plain(values: dict[str, Any]) -> bool:
    """True when values are plainly what OmniQ writes (types, ranges, invariants)."""
    for name in _INT_FIELDS:
        v = values[name]
        if v.__class__ is not int or not 0 <= v < _INT_LIMIT:
            return False
    for name in _INSTANT_FIELDS:
        v = values[name]
        if v is not None and (v.__class__ is not datetime or v.tzinfo is None):
            return False
    for name in _DURATION_FIELDS:
        v = values[name]
        if v is not None and (v.__class__ is not timedelta or v < _ZERO):
            return False
    for name in _TEXT_FIELDS:
        v = values[name]
        if v is not None and v.__class__ is not str:
            return False
    func, callback, ident, queue = (
        values["func"],
        values["callback"],
        values["id"],
        values["queue_name"],
    )
    return (
        func.__class__ is str
        and _REF.match(func) is not None
        and (callback is None or (callback.__class__ is str and _REF.match(callback) is not None))
        and ident.__class__ is str
        and ident != ""
        and queue.__class__ is str
        and queue != ""
        and values["priority"].__class__ is int
        and values["store_result"].__class__ is bool
        and values["cancel_requested"].__class__ is bool
        and values["func_args"].__class__ is tuple
        and values["callback_args"].__class__ is tuple
        and values["func_kwargs"].__class__ is dict
        and values["retry_delay"] is not None
        and values["created_at"] is not None
        and values["run_at"] is not None
        and values["timeout"] != _ZERO
    )


def task_from_row_values(values: dict[str, Any]) -> Task:
    """The Task for values read back from the database (payload already decoded).

    The same record ``Task(**values)`` makes, built without running every
    validator when the values are plainly what OmniQ itself writes (the
    claim path reads thousands of rows per second). Anything unusual, such
    as a hand-edited row, goes through ``Task(**values)`` and its checks,
    which name the offending field.
    """
    status = _STATUS_BY_VALUE.get(values["status"])
    tags = _names(values["tags"])
    depends_on = _names(values["depends_on"])
    if (
        status is None
        or tags is None
        or depends_on is None
        or (depends_on and (len(set(depends_on)) != len(depends_on) or values["id"] in depends_on))
        or not _plain(values)
    ):
        return Task(**values)
    try:
        return _build(values, status, tags, depends_on)  # type: ignore[no-any-return]
    except KeyError:  # a partial row: the record's defaults fill the rest
        return Task(**values)
