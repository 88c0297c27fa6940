"""Payload serializers, callable references and the row converter."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from omniq.errors import SerializationError, TaskNotFound, UnsafePayload
from omniq.models import (
    EventLevel,
    EventType,
    MisfirePolicy,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    Task,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from omniq.serialization import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
    callable_ref,
    converter,
    resolve_ref,
)

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


# --- things to reference ---------------------------------------------------------


def module_function(x: int) -> int:
    """A plain module-level function."""
    return x + 1


class Outer:
    """Nested classes with static and class methods."""

    class Inner:
        @staticmethod
        def method(x: int) -> int:
            return x * 2

        @classmethod
        def build(cls) -> str:
            return cls.__qualname__

    @staticmethod
    def static() -> str:
        return "static"

    def instance_method(self) -> str:
        return "instance"


def _decorator(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@_decorator
def decorated(x: int) -> int:
    return x


NOT_CALLABLE = 42
_MODULE = __name__


# --- JSON -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": math.inf}])
def test_json_rejects_non_finite_numbers(value: Any) -> None:
    with pytest.raises(SerializationError, match="not JSON-serializable"):
        JsonSerializer().dumps(value)


@pytest.mark.parametrize(
    "value",
    # Sets, bytes, aware datetimes and non-str keys have type tags (test_payload_types.py).
    [object(), datetime(2026, 1, 1), {"k": object()}, {(1, 2): object()}, [1, {object()}]],
)
def test_json_rejects_non_json_objects(value: Any) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(value)


def test_json_rejects_cycles() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(cyclic)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "{not json", "", "[1,"])
def test_json_loads_rejects_invalid_text(text: str) -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        JsonSerializer().loads(text)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@hypothesis_settings(database=None)  # no .hypothesis/ example store in the checkout
@given(JSON_VALUES)
def test_json_round_trip(value: Any) -> None:
    serializer = JsonSerializer()
    text = serializer.dumps(value)
    assert serializer.loads(text) == value


def test_json_keeps_unicode_and_is_compact() -> None:
    text = JsonSerializer().dumps({"name": "Zoë ✓ 漢字", "n": [1, 2]})
    assert "Zoë ✓ 漢字" in text
    assert " " not in text.replace("Zoë ✓ 漢字", "")
    assert JsonSerializer().loads(text) == {"name": "Zoë ✓ 漢字", "n": [1, 2]}


def test_json_tuples_stay_tuples() -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps((1, (2, 3)))) == (1, (2, 3))


# --- registry / pickle opt-in ------------------------------------------------------


def test_registry_defaults_to_json_without_pickle() -> None:
    registry = SerializerRegistry()
    assert registry.default.name == "json"
    assert registry.allow_pickle is False
    assert isinstance(registry.get("json"), JsonSerializer)
    assert isinstance(registry.get("json"), Serializer)
    with pytest.raises(UnsafePayload, match="allow_pickle"):
        registry.get("pickle")


def test_registry_refuses_pickle_default_without_opt_in() -> None:
    with pytest.raises(UnsafePayload, match="allow_pickle"):
        SerializerRegistry(default="pickle")


def test_unsafe_payload_is_a_serialization_error() -> None:
    assert issubclass(UnsafePayload, SerializationError)


def test_registry_unknown_serializer() -> None:
    with pytest.raises(SerializationError, match="unknown serializer") as info:
        SerializerRegistry().get("yaml")
    assert not isinstance(info.value, UnsafePayload)
    with pytest.raises(SerializationError):
        SerializerRegistry(default="yaml")


def test_registry_with_pickle_opt_in() -> None:
    registry = SerializerRegistry(default="pickle", allow_pickle=True)
    assert registry.default.name == "pickle"
    pickle_serializer = registry.get("pickle")
    value = {"when": T0, "set": {1, 2}, "bytes": b"\x00\xff"}
    text = pickle_serializer.dumps(value)
    assert isinstance(text, str)
    assert text.isascii()
    assert pickle_serializer.loads(text) == value
    assert registry.get("json").name == "json"


def test_pickle_errors_are_typed() -> None:
    serializer = PickleSerializer()
    with pytest.raises(SerializationError, match="cannot be pickled"):
        serializer.dumps(lambda: None)
    with pytest.raises(SerializationError, match="cannot be loaded"):
        serializer.loads("!!! not base64 pickle !!!")


def test_registry_register_custom() -> None:
    class Upper:
        name = "upper"

        def dumps(self, value: Any) -> str:
            return json.dumps(value).upper()

        def loads(self, data: str) -> Any:
            return json.loads(data.lower())

    registry = SerializerRegistry()
    registry.register(Upper())
    assert registry.get("upper").loads(registry.get("upper").dumps("abc")) == "abc"


# --- callable references -------------------------------------------------------------


def test_module_function_round_trip() -> None:
    ref = callable_ref(module_function)
    assert ref == f"{_MODULE}:module_function"
    assert resolve_ref(ref) is module_function


def test_nested_staticmethod_round_trip() -> None:
    ref = callable_ref(Outer.Inner.method)
    assert ref == f"{_MODULE}:Outer.Inner.method"
    resolved = resolve_ref(ref)
    assert resolved is Outer.Inner.method
    assert resolved(21) == 42


def test_classmethod_round_trip() -> None:
    ref = callable_ref(Outer.Inner.build)
    assert ref == f"{_MODULE}:Outer.Inner.build"
    resolved = resolve_ref(ref)
    assert resolved == Outer.Inner.build
    assert resolved() == "Outer.Inner"


def test_static_and_class_objects_round_trip() -> None:
    assert resolve_ref(callable_ref(Outer.static)) is Outer.static
    assert callable_ref(Outer) == f"{_MODULE}:Outer"
    assert resolve_ref(callable_ref(Outer)) is Outer


def test_decorated_function_refers_to_its_definition() -> None:
    ref = callable_ref(decorated)
    assert ref == f"{_MODULE}:decorated"
    assert resolve_ref(ref) is decorated


def test_stdlib_function_round_trip() -> None:
    assert callable_ref(json.dumps) == "json:dumps"
    assert resolve_ref("json:dumps") is json.dumps
    assert resolve_ref("os.path:join") is __import__("os").path.join


def test_explicit_omniq_ref_and_strings_pass_through() -> None:
    def local() -> None:
        pass

    local.__omniq_ref__ = "pkg.mod:registered"  # type: ignore[attr-defined]
    assert callable_ref(local) == "pkg.mod:registered"
    assert callable_ref("already:a_ref") == "already:a_ref"


def test_lambda_rejected() -> None:
    with pytest.raises(SerializationError, match="lambda or closure"):
        callable_ref(lambda x: x)


def test_closure_rejected() -> None:
    captured = 3

    def closure(x: int) -> int:
        return x + captured

    with pytest.raises(SerializationError, match="lambda or closure"):
        callable_ref(closure)


def test_class_defined_in_function_rejected() -> None:
    class Local:
        @staticmethod
        def run() -> None:
            pass

    with pytest.raises(SerializationError):
        callable_ref(Local.run)


def test_bound_method_of_instance_rejected() -> None:
    with pytest.raises(SerializationError, match="bound method"):
        callable_ref(Outer().instance_method)
    with pytest.raises(SerializationError):
        callable_ref([].append)


def test_partial_rejected() -> None:
    with pytest.raises(SerializationError, match="partial"):
        callable_ref(functools.partial(module_function, 1))


@pytest.mark.parametrize(
    "ref",
    [
        "omniq_no_such_module_xyz:func",
        "omniq_no_such_pkg.sub:func",
        "json:no_such_function",
        f"{_MODULE}:Outer.Missing.method",
        "nocolon",
        ":func",
        "json:",
    ],
)
def test_resolve_unknown_raises_task_not_found(ref: str) -> None:
    with pytest.raises(TaskNotFound):
        resolve_ref(ref)


def test_resolve_non_callable_raises_task_not_found() -> None:
    with pytest.raises(TaskNotFound, match="not callable"):
        resolve_ref(f"{_MODULE}:NOT_CALLABLE")


def test_callable_ref_output_is_a_valid_task_func() -> None:
    for func in (module_function, Outer.Inner.method, Outer.Inner.build, json.loads):
        assert Task(func=callable_ref(func)).func == callable_ref(func)


# --- the row converter -------------------------------------------------------------------


def _round_trip(value: Any) -> Any:
    data = converter.unstructure(value)
    assert isinstance(data, dict)
    return converter.structure(data, type(value))


def test_converter_round_trips_task() -> None:
    plus_two = timezone(timedelta(hours=2))
    task = Task(
        func="pkg.mod:func",
        func_args=(1, "two", [3], {"four": 4}),
        func_kwargs={"name": "Zoë", "nested": {"a": [1, 2]}},
        queue_name="emails",
        name="send",
        description="déscription",
        tags=("a", "b"),
        priority=-5,
        created_at=T0.astimezone(plus_two),
        run_at=T0 + timedelta(minutes=1),
        ttl=timedelta(hours=1, microseconds=3),
        depends_on=("x", "y"),
        status=TaskStatus.RUNNING,
        started_at=T0,
        callback="pkg.mod:done",
        callback_args=(1,),
        retry_count=2,
        max_retries=5,
        retry_delay=timedelta(seconds=2.5),
        result_ttl=timedelta(days=1),
        store_result=False,
        timeout=timedelta(seconds=30),
        unique_key="uk",
        schedule_id="s1",
        scheduled_for=T0,
        attempts=3,
        lease_token="tok",
        lease_expires_at=T0 + timedelta(seconds=60),
        worker_id="w1",
        last_error="boom",
        cancel_requested=True,
    )
    data = converter.unstructure(task)
    assert data["status"] == "running"
    assert data["created_at"] == task.created_at
    assert data["ttl"] == timedelta(hours=1, microseconds=3)
    back = converter.structure(data, Task)
    assert back == task
    assert back.status is TaskStatus.RUNNING


def test_converter_round_trips_minimal_task() -> None:
    task = Task(func="m:f")
    assert _round_trip(task) == task


def test_converter_round_trips_schedule() -> None:
    schedule = Schedule(
        func="pkg.mod:tick",
        schedule_type=ScheduleType.CRON,
        cron_expression="0 * * * *",
        timezone="America/New_York",
        func_args=(1,),
        func_kwargs={"k": "v"},
        queue_name="cron",
        task_options={"priority": 3, "tags": ["x"]},
        tags=("t",),
        max_runs=10,
        status=ScheduleStatus.PAUSED,
        misfire_policy=MisfirePolicy.RUN_ALL,
        misfire_grace=timedelta(seconds=30),
        next_run_at=T0,
        last_run_at=T0 - timedelta(hours=1),
        run_count=4,
        paused_at=T0,
    )
    back = _round_trip(schedule)
    assert back == schedule
    assert back.schedule_type is ScheduleType.CRON
    interval = Schedule(func="m:f", schedule_type="interval", interval=timedelta(minutes=5))
    assert _round_trip(interval) == interval


def test_converter_round_trips_result() -> None:
    result = TaskResult(
        task_id="t1",
        status=ResultStatus.ERROR,
        result={"partial": [1, 2]},
        error="ValueError: bad",
        error_type="ValueError",
        error_traceback="Traceback...",
        schedule_id="s",
        created_at=T0,
        started_at=T0,
        completed_at=T0 + timedelta(seconds=1),
        ttl=timedelta(days=1),
        execution_time=1.25,
        worker_id="w",
        retry_count=1,
    )
    back = _round_trip(result)
    assert back == result
    assert back.expires_at == T0 + timedelta(days=1)


def test_converter_round_trips_event() -> None:
    event = TaskEvent(
        event_type=EventType.FAILED,
        task_id="t1",
        id=7,
        timestamp=T0,
        queue_name="q",
        worker_id="w",
        schedule_id="s",
        message="failed",
        data={"attempt": 2, "why": ["x"]},
        execution_time=0.5,
        retry_count=2,
        error="boom",
        source="worker",
        level=EventLevel.ERROR,
    )
    data = converter.unstructure(event)
    assert data["event_type"] == "failed"
    assert data["level"] == "error"
    assert _round_trip(event) == event


def test_converter_rejects_wrong_instant_types() -> None:
    data = converter.unstructure(Task(func="m:f"))
    data["created_at"] = "2026-01-01T00:00:00+00:00"
    with pytest.raises(Exception) as info:
        converter.structure(data, Task)
    assert "datetime" in repr(info.value) or "expected" in str(info.value)


def test_references_are_remembered_and_refusals_are_not() -> None:
    from omniq.refs import _REFS

    assert callable_ref(json.dumps) == "json:dumps"
    assert _REFS[json.dumps] == "json:dumps"
    assert callable_ref(json.dumps) == "json:dumps"
    for _ in range(2):  # a refused callable is refused every time, never cached
        with pytest.raises(SerializationError, match="lambda"):
            callable_ref(lambda: None)
    assert not any("<lambda>" in ref for ref in _REFS.values())
