"""Flow control declarations: per-key concurrency limits and rate limits, and queue settings.

``Limit(max=2, key_arg="tenant")`` and ``Rate(limit=100, per=timedelta(minutes=1))``
are declared on a task (``@oq.task(concurrency=..., rate=...)``); the claim
enforces them across every worker (see :mod:`omniq.services.flow`). A key is a
constant string, the value of one of the call's arguments (``key_arg``), or a
callable of the call's arguments (``key``); without one the key is the task's
function reference (the limit then holds for the task as a whole). Tasks
that resolve to the same key share its slots (or its tokens), whatever their
function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from omniq.errors import ValidationError

__all__ = [
    "KeySource",
    "Limit",
    "QueueLimits",
    "Rate",
    "check_key",
    "resolve_key",
]

#: A key: a constant string, or a callable of the call's arguments returning one.
KeySource = str | Callable[..., Any] | None

#: The longest key stored (the limit tables' key column).
MAX_KEY = 200


def _positive(field: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
            raise ValidationError(field, f"must be a positive integer, got {value!r}")

    return check


def check_key(value: Any, field: str) -> str:
    """``value`` as a stored key: a non-empty string of at most 200 characters, no NUL."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(field, f"a key must be a string (or an int), got {value!r}")
    key = str(value)
    if not key or len(key) > MAX_KEY or "\x00" in key:
        raise ValidationError(field, f"a key must be 1-{MAX_KEY} characters without NUL")
    return key


def _key_source(field: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, str):
            check_key(value, field)
        elif not callable(value):
            raise ValidationError(
                field, f"expected a string or a callable of the task's arguments, got {value!r}"
            )
        if inst.key_arg is not None:
            raise ValidationError(field, "give key or key_arg, not both")

    return check


def _key_arg(field: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, _attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.isidentifier()):
            raise ValidationError(field, f"expected a parameter name, got {value!r}")

    return check


def _period(value: Any) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ValidationError("rate.per", f"expected a timedelta or seconds, got {value!r}")
    try:
        per = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except (OverflowError, ValueError):  # NaN, infinity, beyond timedelta's range
        per = timedelta(0)
    if not per > timedelta(0):
        raise ValidationError("rate.per", f"must be a positive duration, got {value!r}")
    return per


@attrs.frozen
class Limit:
    """At most ``max`` tasks of one key run (or are held by a worker) at a time.

    ``key``: a constant string or a callable of the call's arguments;
    ``key_arg``: the name of the argument whose value is the key. Neither:
    the task's function is the key.
    """

    max: int = attrs.field(validator=_positive("concurrency.max"))
    key: KeySource = attrs.field(
        default=None, kw_only=True, validator=_key_source("concurrency.key")
    )
    key_arg: str | None = attrs.field(
        default=None, kw_only=True, validator=_key_arg("concurrency.key_arg")
    )


@attrs.frozen
class Rate:
    """At most ``limit`` starts per ``per`` for one key: a token bucket of ``limit``
    tokens, refilled continuously (``limit`` tokens per ``per``).

    ``key`` / ``key_arg`` as for :class:`Limit`.
    """

    limit: int = attrs.field(validator=_positive("rate.limit"))
    per: timedelta = attrs.field(default=timedelta(seconds=1), converter=_period)
    key: KeySource = attrs.field(default=None, kw_only=True, validator=_key_source("rate.key"))
    key_arg: str | None = attrs.field(
        default=None, kw_only=True, validator=_key_arg("rate.key_arg")
    )


@attrs.frozen(kw_only=True)
class QueueLimits:
    """A queue's flow control as stored: its limits (None: none) and whether it is paused."""

    queue_name: str
    concurrency: int | None = None
    rate: Rate | None = None
    paused_at: datetime | None = None

    @property
    def paused(self) -> bool:
        """True while workers do not claim from the queue."""
        return self.paused_at is not None


def check_declaration(
    func: Callable[..., Any], field: str, spec: Limit | Rate | None, kind: type[Limit | Rate]
) -> None:
    """Refuse a declaration that cannot work for ``func`` (a missing ``key_arg`` parameter)."""
    if spec is None:
        return
    if not isinstance(spec, kind):
        raise ValidationError(field, f"expected a {kind.__name__}(...), got {spec!r}")
    if spec.key_arg is None:
        return
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if spec.key_arg not in params and not takes_any:
        raise ValidationError(
            f"{field}.key_arg", f"{func.__qualname__} has no parameter {spec.key_arg!r}"
        )


class _UnknownInput:
    """Stands for a workflow step's first argument (the previous step's result) while
    its keys are resolved at enqueue time, before that result exists."""

    def _unknown(self, *_: Any, **__: Any) -> Any:
        raise TypeError("the previous step's result is not known when the workflow is enqueued")

    __str__ = __format__ = __getitem__ = __getattr__ = __iter__ = __int__ = _unknown
    __hash__ = None  # type: ignore[assignment]


def resolve_key(
    spec: Limit | Rate,
    field: str,
    *,
    default: str,
    func: Callable[..., Any] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    before_input: bool = False,
) -> str:
    """The key of one call under ``spec`` (``default``: the task's function reference).

    ``before_input``: the call is a workflow step's, ``func(<previous result>,
    *args, **kwargs)``; a key taken from that result (not known when the
    workflow is enqueued) is refused with a ``ValidationError``.
    """
    unknown = _UnknownInput()
    call = (unknown, *args) if before_input else tuple(args)
    why = (
        "it would come from the previous step's result, which is not known when the "
        f"workflow is enqueued: key on another argument, or pass {field}_key=..."
    )
    if spec.key_arg is not None:
        value = _argument(spec.key_arg, field, func, call, kwargs)
        if value is unknown:
            raise ValidationError(f"{field}.key_arg", f"{spec.key_arg!r}: {why}")
        return check_key(value, f"{field}.key_arg")
    if spec.key is None:
        return check_key(default, field)
    if isinstance(spec.key, str):
        return spec.key
    try:
        value = spec.key(*call, **kwargs)
    except Exception as exc:
        raise ValidationError(
            f"{field}.key", f"the key function raised {type(exc).__name__}: {exc}"
        ) from exc
    if value is unknown:
        raise ValidationError(f"{field}.key", why)
    return check_key(value, f"{field}.key")


def _argument(
    name: str,
    field: str,
    func: Callable[..., Any] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> Any:
    if name in kwargs:
        return kwargs[name]
    if func is not None:
        try:
            bound = inspect.signature(func).bind_partial(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"{field}.key_arg", f"the arguments do not fit: {exc}") from None
        bound.apply_defaults()
        if name in bound.arguments:
            return bound.arguments[name]
    raise ValidationError(f"{field}.key_arg", f"the call has no argument {name!r}")


def task_limit_fields(
    *,
    concurrency: Limit | None,
    rate: Rate | None,
    concurrency_key: str | None,
    rate_key: str | None,
    ref: str,
    func: Callable[..., Any] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The Task fields of one call's limits: keys resolved from its arguments.

    ``concurrency_key`` / ``rate_key`` override the declared key for this call.
    """
    fields: dict[str, Any] = {}
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise ValidationError("concurrency", f"expected a Limit(...), got {concurrency!r}")
    if rate is not None and not isinstance(rate, Rate):
        raise ValidationError("rate", f"expected a Rate(...), got {rate!r}")

    def key_of(spec: Limit | Rate, field: str) -> str:
        return resolve_key(spec, field, default=ref, func=func, args=args, kwargs=kwargs)

    if concurrency is not None:
        key = (
            check_key(concurrency_key, "concurrency_key")
            if concurrency_key is not None
            else key_of(concurrency, "concurrency")
        )
        fields.update(concurrency_key=key, concurrency_max=concurrency.max)
    elif concurrency_key is not None:
        raise ValidationError(
            "concurrency_key",
            "the task declares no concurrency limit: declare "
            "@oq.task(concurrency=Limit(...)) or pass concurrency=Limit(...)",
        )
    if rate is not None:
        key = check_key(rate_key, "rate_key") if rate_key is not None else key_of(rate, "rate")
        fields.update(rate_key=key, rate_limit=rate.limit, rate_period=rate.per)
    elif rate_key is not None:
        raise ValidationError(
            "rate_key",
            "the task declares no rate limit: declare @oq.task(rate=Rate(...)) "
            "or pass rate=Rate(...)",
        )
    return fields
