"""The Schedule record."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import croniter

from omniq._time import new_id, utcnow
from omniq.errors import ValidationError
from omniq.models._fields import (
    args_tuple,
    aware,
    id_str,
    kwargs_dict,
    name_str,
    non_negative_duration,
    non_negative_int,
    optional_key,
    optional_str,
    str_tuple,
    to_misfire_policy,
    to_schedule_status,
    to_schedule_type,
)
from omniq.models.enums import MisfirePolicy, ScheduleStatus, ScheduleType
from omniq.models.task import func_ref, to_func_ref

__all__ = ["TASK_OPTION_KEYS", "MisfirePolicy", "Schedule", "ScheduleStatus", "ScheduleType"]

#: Task options a schedule may carry into the tasks it creates.
TASK_OPTION_KEYS = frozenset(
    {
        "priority",
        "max_retries",
        "retry_delay",
        "timeout",
        "ttl",
        "result_ttl",
        "store_result",
        "callback",
        "callback_args",
        "tags",
        "name",
        "description",
        # Flow control, resolved when the schedule is made (its arguments are fixed):
        # the fired tasks' keys and limits (rate_period in seconds).
        "concurrency_key",
        "concurrency_max",
        "rate_key",
        "rate_limit",
        "rate_period",
    }
)


def _check_options(_inst: object, _attr: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    unknown = set(value) - TASK_OPTION_KEYS
    if unknown:
        raise ValidationError(
            "task_options",
            f"unknown option(s) {sorted(unknown)}; allowed: {sorted(TASK_OPTION_KEYS)}",
        )


def _zone_name(value: Any) -> Any:
    """A ``ZoneInfo`` stands for its key (``ZoneInfo("Europe/Paris")``: ``"Europe/Paris"``)."""
    if isinstance(value, ZoneInfo) and value.key:
        return value.key
    return value


def _seconds_or_duration(value: Any) -> Any:
    """A number of seconds stands for that duration (as ``schedule(interval=60)`` takes it)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return timedelta(seconds=value)
        except OverflowError:
            return value  # the validator names it
    return value


def _check_timezone(_inst: object, _attr: attrs.Attribute[Any], value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValidationError("timezone", f"unknown time zone {value!r}") from None


def _check_metadata(_inst: object, _attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValidationError("metadata", f"expected a mapping with string keys, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("metadata", f"must be JSON data: {exc}") from None


def _to_dict(value: Any) -> Any:
    return {} if value is None else dict(value) if isinstance(value, Mapping) else value


def _check_cron(_inst: object, _attr: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not croniter.is_valid(value):
        raise ValidationError("cron_expression", f"invalid cron expression {value!r}")


@attrs.frozen(kw_only=True)
class Schedule:
    """A recurring or one-shot plan that creates tasks from its template.

    ``schedule_type`` says which of ``cron_expression`` (with ``timezone``),
    ``interval`` or ``run_at`` drives ``next_run_at``. It completes after
    ``max_runs`` runs or once its next run would fall after ``end_at``.
    """

    func: str = attrs.field(converter=to_func_ref, validator=func_ref)
    schedule_type: ScheduleType = attrs.field(converter=to_schedule_type)
    func_args: tuple[Any, ...] = attrs.field(default=(), converter=args_tuple)
    func_kwargs: dict[str, Any] = attrs.field(factory=dict, converter=kwargs_dict)
    queue_name: str = attrs.field(default="default", validator=name_str)
    task_options: dict[str, Any] = attrs.field(factory=dict, validator=_check_options)
    id: str = attrs.field(factory=new_id, validator=id_str)
    name: str | None = attrs.field(default=None, validator=optional_key)
    description: str | None = attrs.field(default=None, validator=optional_str)
    tags: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)
    cron_expression: str | None = attrs.field(default=None, validator=_check_cron)
    timezone: str = attrs.field(default="UTC", converter=_zone_name, validator=_check_timezone)
    interval: timedelta | None = attrs.field(
        default=None, converter=_seconds_or_duration, validator=non_negative_duration
    )
    run_at: datetime | None = attrs.field(default=None, validator=aware)
    max_runs: int | None = attrs.field(default=None, validator=non_negative_int)
    #: No run after this instant: the schedule completes instead.
    end_at: datetime | None = attrs.field(default=None, validator=aware)
    #: Free-form JSON data of the application's (not used by OmniQ).
    metadata: dict[str, Any] = attrs.field(
        factory=dict, converter=_to_dict, validator=_check_metadata
    )
    status: ScheduleStatus = attrs.field(
        default=ScheduleStatus.ACTIVE, converter=to_schedule_status
    )
    misfire_policy: MisfirePolicy = attrs.field(
        default=MisfirePolicy.RUN_ONCE, converter=to_misfire_policy
    )
    misfire_grace: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    created_at: datetime = attrs.field(factory=utcnow, validator=aware)
    updated_at: datetime | None = attrs.field(default=None, validator=aware)
    last_run_at: datetime | None = attrs.field(default=None, validator=aware)
    next_run_at: datetime | None = attrs.field(default=None, validator=aware)
    run_count: int = attrs.field(default=0, validator=non_negative_int)
    paused_at: datetime | None = attrs.field(default=None, validator=aware)
    resumed_at: datetime | None = attrs.field(default=None, validator=aware)
    serializer: str = "json"
    payload_error: str | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        kind = self.schedule_type
        if kind is ScheduleType.CRON and self.cron_expression is None:
            raise ValidationError("cron_expression", "required for a cron schedule")
        if kind is ScheduleType.INTERVAL and (
            self.interval is None or self.interval <= timedelta(0)
        ):
            raise ValidationError("interval", "a positive interval is required")
        if kind is ScheduleType.TIMESTAMP and self.run_at is None:
            raise ValidationError("run_at", "required for a one-shot (timestamp) schedule")
