"""The Task record."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import attrs

from omniq._time import new_id, utcnow
from omniq.errors import ValidationError
from omniq.models._fields import (
    args_tuple,
    aware,
    bounded_int,
    id_str,
    kwargs_dict,
    name_str,
    non_negative_duration,
    non_negative_int,
    optional_id,
    optional_key,
    optional_str,
    str_tuple,
    to_task_status,
)
from omniq.models.enums import TaskStatus
from omniq.refs import function_ref, remember_function

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "Task",
    "TaskStatus",
    "field_keys",
    "func_ref",
    "task_started",
    "to_func_ref",
]

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def func_ref(_inst: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Validator: a callable reference of the form ``package.module:qualname``."""
    if value is None and attribute.name != "func":
        return
    if value.__class__ is str and value in _GOOD_REFS:
        return  # a task's function is checked once per process, not once per record
    if not isinstance(value, str) or not _REF.match(value):
        raise ValidationError(
            attribute.name, f"expected a reference 'package.module:qualname', got {value!r}"
        )
    if value.__class__ is str:
        if len(_GOOD_REFS) >= _GOOD_REFS_KEPT:
            _GOOD_REFS.clear()
        _GOOD_REFS.add(value)


#: References (exactly str) that passed :func:`func_ref`.
_GOOD_REFS: set[str] = set()
_GOOD_REFS_KEPT = 4096


#: The default of ``max_retries`` (the seed's schema); ``Settings.default_max_retries``
#: sets it for tasks the queue builds.
DEFAULT_MAX_RETRIES = 3


def to_func_ref(value: Callable[..., Any] | str) -> str:
    """Converter: a function becomes its reference, and workers of this process may run it.

    Anything not callable is left to :func:`func_ref`, which names the field.
    """
    if isinstance(value, str) or not callable(value):
        return value
    return remember_function(value, function_ref(value, "func"))


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
    if not value and value.__class__ in (tuple, list):
        return ()  # most tasks depend on nothing
    try:
        ids = tuple(dict.fromkeys(str_tuple(value)))
    except ValidationError as exc:
        raise _renamed("depends_on", exc) from None
    if len(ids) > MAX_DEPENDS_ON:
        raise ValidationError(
            "depends_on",
            f"at most {MAX_DEPENDS_ON:,} dependencies, got {len(ids):,} "
            "(a chord or a group of groups joins more)",
        )
    return ids


#: The most dependencies one task may have (a statement's arguments are bounded:
#: PostgreSQL's protocol takes at most 32,767).
MAX_DEPENDS_ON = 10_000


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

    ``func`` may be given as a module-level function: it is stored as its
    reference, and workers of this process may run it.

    Records are immutable; change one with ``attrs.evolve``. ``expires_at`` is
    ``created_at + ttl`` unless given; ``status`` is ``waiting`` while
    ``depends_on`` names tasks, else ``pending``.
    """

    func: str = attrs.field(converter=to_func_ref, validator=func_ref)
    func_args: tuple[Any, ...] = attrs.field(default=(), converter=args_tuple)
    func_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=kwargs_dict)
    id: str = attrs.field(factory=new_id, validator=id_str)
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
    max_retries: int = attrs.field(default=DEFAULT_MAX_RETRIES, validator=non_negative_int)
    retry_delay: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=non_negative_duration
    )
    result_ttl: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    store_result: bool = attrs.field(default=True, validator=_bool)

    timeout: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    unique_key: str | None = attrs.field(default=None, validator=optional_key)
    schedule_id: str | None = attrs.field(default=None, validator=optional_id)
    scheduled_for: datetime | None = attrs.field(default=None, validator=aware)
    #: How many times the function started (a claimed task that never started
    #: does not count).
    attempts: int = attrs.field(default=0, validator=non_negative_int)
    #: How many times the task's lease expired and maintenance recovered it.
    lost_count: int = attrs.field(default=0, validator=non_negative_int)
    lease_token: str | None = attrs.field(default=None, validator=optional_id)
    lease_expires_at: datetime | None = attrs.field(default=None, validator=aware)
    worker_id: str | None = None
    last_error: str | None = None
    cancel_requested: bool = attrs.field(default=False, validator=_bool)
    serializer: str = "json"
    #: The W3C trace context (JSON of ``traceparent``/``tracestate``) of the span
    #: that enqueued the task, when tracing is on; None otherwise.
    trace_context: str | None = attrs.field(default=None, validator=optional_str)
    #: Flow control (see :mod:`omniq.models.limits`): at most ``concurrency_max``
    #: tasks of ``concurrency_key`` run at a time; ``rate_limit`` starts per
    #: ``rate_period`` for ``rate_key``. None: no such limit.
    concurrency_key: str | None = attrs.field(default=None, validator=optional_str)
    concurrency_max: int | None = attrs.field(default=None, validator=non_negative_int)
    rate_key: str | None = attrs.field(default=None, validator=optional_str)
    rate_limit: int | None = attrs.field(default=None, validator=non_negative_int)
    rate_period: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    #: The workflow (chain, group, chord) the task is a member of, or None.
    workflow_id: str | None = attrs.field(default=None, validator=optional_str)
    #: Set when the stored payload could not be decoded; the args are then empty
    #: and the worker fails the task with this message instead of running it.
    payload_error: str | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.id in self.depends_on:
            raise ValidationError("depends_on", "a task cannot depend on itself")
        if self.timeout is not None and self.timeout == timedelta(0):
            raise ValidationError("timeout", "must be positive (or None for the default)")
        if (self.concurrency_key is None) != (self.concurrency_max is None):
            raise ValidationError("concurrency_key", "a concurrency key goes with its maximum")
        if self.concurrency_max == 0:
            raise ValidationError("concurrency_max", "must be positive")
        if len({self.rate_key is None, self.rate_limit is None, self.rate_period is None}) > 1:
            raise ValidationError("rate_key", "a rate key goes with its limit and period")
        if self.rate_limit == 0 or self.rate_period == timedelta(0):
            raise ValidationError("rate_limit", "must be positive")

    @property
    def is_final(self) -> bool:
        """True once the task reached completed, failed, cancelled or expired."""
        return self.status.is_final


def field_keys(keys: Iterable[str]) -> list[str]:
    """Column keys as the field names' own string objects (other keys as they are).

    CPython matches a keyword argument to a parameter by identity before
    equality, and a column name read back from the database is an equal but
    distinct string: building a ``Task`` from such keys cost a string
    comparison per parameter tried (about a thousand per Task, more than the
    validators). A reader swaps the keys once per result, not per row; every
    value still goes through the record's validators.
    """
    name = _FIELD_NAME.get
    return [name(key, key) for key in keys]


_FIELD_NAME = {f.name: f.name for f in attrs.fields(Task)}
_FIELDS = tuple(_FIELD_NAME)
_STARTED_AT = attrs.fields(Task).started_at
_ATTEMPTS = attrs.fields(Task).attempts
_TRACE_CONTEXT = attrs.fields(Task).trace_context
_new = object.__new__
_set = object.__setattr__


def task_started(task: Task, at: datetime) -> Task:
    """``task`` as its function starts: ``started_at=at`` and one more attempt.

    What ``attrs.evolve(task, started_at=at, attempts=task.attempts + 1)``
    returns, without running the other fields' converters and validators
    again: their values come from a record that passed them, and the two new
    values go through their own fields' validators. A worker does this once
    per attempt, where re-building the whole record cost about a tenth of the
    worker's instructions per no-op task.
    """
    if at is None:
        raise ValidationError("started_at", "expected a datetime, got None")
    attempts = task.attempts + 1
    aware(task, _STARTED_AT, at)
    non_negative_int(task, _ATTEMPTS, attempts)
    return _copy_with(task, started_at=at, attempts=attempts)


def task_traced(task: Task, trace_context: str) -> Task:
    """``task`` carrying ``trace_context`` (its producer span's, see omniq.tracing).

    What ``attrs.evolve(task, trace_context=trace_context)`` returns, as
    :func:`task_started` does it: the new value through its field's validator,
    the others as the record holds them. Tracing does this for every task it
    sends, where re-building the whole record was about a third of what
    tracing added to an enqueue.
    """
    optional_str(task, _TRACE_CONTEXT, trace_context)
    return _copy_with(task, trace_context=trace_context)


def _copy_with(task: Task, **values: Any) -> Task:
    """A copy of ``task`` with ``values`` (validated by the caller: fields that no
    converter and no check of ``__attrs_post_init__`` involves). A subclass's
    record is rebuilt by ``attrs.evolve``, which knows its own fields."""
    if type(task) is not Task:
        return attrs.evolve(task, **values)
    copy = _new(Task)
    for name in _FIELDS:
        _set(copy, name, getattr(task, name))
    for name, value in values.items():
        _set(copy, name, value)
    return copy
