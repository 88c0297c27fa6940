"""The seed's models as its code uses them: functions as ``func``, TaskError records,
attempt records, schedule metadata and end, registry withdrawal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from omniq.errors import TaskNotFound, ValidationError
from omniq.models import (
    ResultStatus,
    Schedule,
    Settings,
    Task,
    TaskAttempt,
    TaskError,
    TaskResult,
)
from omniq.refs import code_functions
from omniq.services import ErrorInfo
from omniq.worker import TaskRegistry, default_registry
from tests import app_tasks

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def module_level(x: int) -> int:
    return x


class Holder:
    def method(self) -> None:
        return None

    @staticmethod
    def static() -> None:
        return None


def test_a_function_as_func_is_stored_as_its_reference_and_runnable_here() -> None:
    task = Task(func=module_level)
    assert task.func == "tests.unit.test_seed_models:module_level"
    assert code_functions[task.func] is module_level
    assert TaskRegistry(parents=[default_registry]).resolve(task.func) is module_level
    assert Task(func=Holder.static).func == "tests.unit.test_seed_models:Holder.static"


def test_functions_that_cannot_be_referenced_are_refused_with_the_reason() -> None:
    def nested() -> None:
        return None

    for bad, why in (
        (lambda: None, "lambda"),
        (nested, "closure"),
        (Holder().method, "bound method"),
    ):
        with pytest.raises(ValidationError) as info:
            Task(func=bad)
        assert info.value.field == "func"
        assert why in str(info.value)
        assert "module level" in str(info.value)  # what to do instead
    with pytest.raises(ValidationError, match=r"^func: expected a reference"):
        Task(func=42)  # type: ignore[arg-type]


def test_max_retries_defaults_to_three_and_settings_keep_it_configurable() -> None:
    assert Task(func=module_level).max_retries == 3
    assert Settings().default_max_retries == 3
    assert Settings(default_max_retries=0).default_max_retries == 0


def test_task_error_from_exception_and_dict_round_trip() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        error = TaskError.from_exception(exc, attempt=2, at=T0, retryable=True)
    assert (error.type, error.message, error.attempt, error.at, error.retryable) == (
        "ValueError",
        "bad value",
        2,
        T0,
        True,
    )
    assert error.traceback is not None and "raise ValueError" in error.traceback
    data = json.loads(json.dumps(error.to_dict()))
    assert TaskError.from_dict(data) == error
    assert str(error) == "ValueError: bad value"
    assert ErrorInfo is TaskError  # one record, the former name kept
    with pytest.raises(ValidationError, match="unknown key"):
        TaskError.from_dict({"type": "E", "message": "m", "colour": "red"})
    with pytest.raises(ValidationError, match=r"^at: "):
        TaskError.from_dict({"type": "E", "message": "m", "at": "yesterday"})
    with pytest.raises(ValidationError, match=r"^at: "):
        TaskError(type="E", message="m", at=datetime(2026, 1, 1))  # naive


def test_results_and_attempts_carry_a_task_error() -> None:
    failed = TaskResult(
        task_id="t",
        status=ResultStatus.ERROR,
        error="boom",
        error_type="RuntimeError",
        error_traceback="tb",
        retry_count=2,
        completed_at=T0,
    )
    assert failed.task_error == TaskError(
        type="RuntimeError", message="boom", traceback="tb", attempt=3, at=T0
    )
    assert TaskResult(task_id="t", status="success", result=1).task_error is None
    attempt = TaskAttempt(
        task_id="t",
        attempt=1,
        error=TaskError(type="E", message="m", retryable=True),
        finished_at=T0,
    )
    assert attempt.will_retry


def test_schedule_metadata_and_end_at() -> None:
    schedule = Schedule(
        func=module_level,
        schedule_type="interval",
        interval=timedelta(seconds=5),
        end_at=T0,
        metadata={"owner": "ops", "n": [1, 2]},
    )
    assert schedule.metadata == {"owner": "ops", "n": [1, 2]}
    assert schedule.end_at == T0
    assert (
        Schedule(func=module_level, schedule_type="cron", cron_expression="* * * * *").metadata
        == {}
    )
    with pytest.raises(ValidationError, match=r"^metadata: must be JSON"):
        Schedule(
            func=module_level,
            schedule_type="cron",
            cron_expression="* * * * *",
            metadata={"x": object()},
        )
    with pytest.raises(ValidationError, match=r"^metadata: expected a mapping"):
        Schedule(func=module_level, schedule_type="cron", cron_expression="* * * * *", metadata=[1])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^end_at: "):
        Schedule(
            func=module_level,
            schedule_type="cron",
            cron_expression="* * * * *",
            end_at=datetime(2026, 1, 1),
        )


def test_registry_unregister() -> None:
    registry = TaskRegistry()
    registry.register(app_tasks.add)
    ref = "tests.app_tasks:add"
    assert registry.resolve(ref) is app_tasks.add
    assert registry.unregister(ref) is True
    assert registry.unregister(app_tasks.add) is False  # by function too; already gone
    with pytest.raises(TaskNotFound, match="not registered"):
        registry.resolve(ref)
    registry.register(app_tasks.add, name="adder")
    assert registry.unregister("adder") is True
