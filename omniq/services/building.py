"""Building tasks: a validated Task record with the queue's defaults (nothing is written)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from omniq._time import require_aware, to_timedelta
from omniq.errors import ValidationError
from omniq.models import Settings, Task
from omniq.models.limits import Limit, Rate, task_limit_fields
from omniq.models.rules import queue_names
from omniq.refs import function_ref
from omniq.services._shared import _as_tuple, _duration
from omniq.services._storage import Storage

__all__ = ["TaskBuilder"]


class TaskBuilder:
    """The base of the queue's services: storage, settings, default queues, and task building."""

    def __init__(self, storage: Storage, queues: Sequence[str] | None = None) -> None:
        self.storage = storage
        self.settings: Settings = storage.settings
        self.queues = queue_names(queues)

    def build_task(
        self,
        func: Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        queue_name: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        run_in: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        result_ttl: timedelta | float | None = None,
        max_retries: int | None = None,
        retry_delay: timedelta | float | None = None,
        timeout: timedelta | float | None = None,
        depends_on: Sequence[str] | None = None,
        callback: Callable[..., Any] | str | None = None,
        callback_args: Sequence[Any] | None = None,
        unique_key: str | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        store_result: bool = True,
        serializer: str | None = None,
        task_id: str | None = None,
        concurrency: Limit | None = None,
        rate: Rate | None = None,
        concurrency_key: str | None = None,
        rate_key: str | None = None,
    ) -> Task:
        """A validated Task with this queue's defaults applied (nothing is written)."""
        s = self.settings
        if isinstance(func_args, Mapping):
            if func_kwargs:
                raise ValidationError(
                    "func_args",
                    "a mapping of keyword arguments cannot be combined with func_kwargs",
                )
            func_kwargs = func_args
            func_args = ()
        now = self.storage.now()
        if run_at is not None and run_in is not None:
            raise ValidationError("run_at", "give run_at or run_in, not both")
        when = now
        if run_at is not None:
            when = require_aware(run_at, "run_at")
        elif run_in is not None:
            try:
                when = now + to_timedelta(run_in, "run_in")
            except OverflowError:
                raise ValidationError("run_in", f"{run_in!r} is past the year 9999") from None
        if isinstance(depends_on, str):
            raise ValidationError("depends_on", "expected a list of task ids, got a string")
        opts: dict[str, Any] = {}
        if task_id is not None:
            opts["id"] = task_id
        ref = function_ref(func, "func")
        if any(x is not None for x in (concurrency, rate, concurrency_key, rate_key)):
            opts.update(
                task_limit_fields(
                    concurrency=concurrency,
                    rate=rate,
                    concurrency_key=concurrency_key,
                    rate_key=rate_key,
                    ref=ref,
                    func=None if isinstance(func, str) else func,
                    args=tuple(func_args or ()),
                    kwargs=dict(func_kwargs or {}),
                )
            )
        return Task(
            func=ref,
            func_args=func_args or (),
            func_kwargs=func_kwargs or {},
            queue_name=s.default_queue if queue_name is None else queue_name,
            priority=priority,
            created_at=now,
            run_at=when,
            ttl=_duration(ttl, "ttl", s.default_task_ttl),
            result_ttl=_duration(result_ttl, "result_ttl", s.default_result_ttl),
            max_retries=s.default_max_retries if max_retries is None else max_retries,
            retry_delay=_duration(retry_delay, "retry_delay", s.default_retry_delay)
            or timedelta(0),
            timeout=_duration(timeout, "timeout", s.default_timeout),
            depends_on=_as_tuple(depends_on),
            callback=function_ref(callback, "callback") if callback is not None else None,
            callback_args=_as_tuple(callback_args),
            unique_key=unique_key,
            name=name,
            description=description,
            tags=_as_tuple(tags),
            store_result=store_result,
            serializer=serializer or self.storage.serializers.default.name,
            **opts,
        )
