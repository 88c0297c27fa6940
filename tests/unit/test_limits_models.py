"""Limit and Rate declarations (issue 16): typed, checked when made, keys resolved per call."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omniq import Limit, Rate, ValidationError
from omniq.app_flow import check_task_limits
from omniq.models.limits import resolve_key, task_limit_fields


def job(tenant: str, n: int = 0, **extra: object) -> None:
    return None


def fixed(user: str) -> None:
    return None


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Limit(0), "concurrency.max"),
        (lambda: Limit(True), "concurrency.max"),
        (lambda: Limit("2"), "concurrency.max"),
        (lambda: Limit(2, key=3), "concurrency.key"),
        (lambda: Limit(2, key=""), "concurrency.key"),
        (lambda: Limit(2, key="a", key_arg="b"), "concurrency.key"),
        (lambda: Limit(2, key_arg="not a name"), "concurrency.key_arg"),
        (lambda: Rate(0), "rate.limit"),
        (lambda: Rate(5, per=0), "rate.per"),
        (lambda: Rate(5, per=-1.0), "rate.per"),
        (lambda: Rate(5, per="1s"), "rate.per"),
        (lambda: Rate(5, per=float("nan")), "rate.per"),
        (lambda: Rate(5, per=float("inf")), "rate.per"),
        (lambda: Rate(5, per=1e300), "rate.per"),
        (lambda: Rate(5, key=object()), "rate.key"),
    ],
)
def test_bad_declarations_name_the_field(make: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.field == field


def test_rate_period_accepts_seconds() -> None:
    assert Rate(10, per=2).per == timedelta(seconds=2)
    assert Rate(10).per == timedelta(seconds=1)


def test_key_arg_must_be_a_parameter_of_the_task() -> None:
    check_task_limits(job, {"concurrency": Limit(1, key_arg="tenant")})
    check_task_limits(job, {"rate": Rate(1, key_arg="anything")})  # **extra takes it
    with pytest.raises(ValidationError) as caught:
        check_task_limits(fixed, {"rate": Rate(1, key_arg="tenant")})
    assert caught.value.field == "rate.key_arg"
    with pytest.raises(ValidationError) as caught:
        check_task_limits(fixed, {"concurrency": 3})
    assert caught.value.field == "concurrency"


def _key(spec: Limit | Rate, *args: object, **kwargs: object) -> str:
    return resolve_key(spec, "concurrency", default="m:job", func=job, args=args, kwargs=kwargs)


def test_keys_from_constant_argument_callable_and_default() -> None:
    assert _key(Limit(1, key="k"), "a") == "k"
    assert _key(Limit(1, key_arg="tenant"), "a") == "a"
    assert _key(Limit(1, key_arg="tenant"), tenant="b") == "b"
    assert _key(Limit(1, key_arg="n"), "a") == "0"  # the parameter's default
    assert _key(Limit(1, key=lambda tenant, n=0: f"{tenant}-{n}"), "a", n=3) == "a-3"
    assert _key(Limit(1)) == "m:job"


def test_bad_keys_at_enqueue_name_the_field() -> None:
    with pytest.raises(ValidationError, match="raised ZeroDivisionError"):
        _key(Limit(1, key=lambda tenant: 1 / 0), "a")
    with pytest.raises(ValidationError, match="a key must be"):
        _key(Limit(1, key=lambda tenant: None), "a")
    with pytest.raises(ValidationError, match="1-200 characters"):
        _key(Limit(1, key_arg="tenant"), "x" * 201)
    with pytest.raises(ValidationError, match="no argument 'user'"):
        resolve_key(
            Limit(1, key_arg="user"), "concurrency", default="d", func=None, args=(), kwargs={}
        )


def test_a_key_override_needs_a_declared_limit() -> None:
    common = {"ref": "m:job", "func": job, "args": ("a",), "kwargs": {}}
    fields = task_limit_fields(
        concurrency=Limit(2, key_arg="tenant"),
        rate=Rate(3, per=5),
        concurrency_key="vip",
        rate_key=None,
        **common,  # type: ignore[arg-type]
    )
    assert fields == {
        "concurrency_key": "vip",
        "concurrency_max": 2,
        "rate_key": "m:job",
        "rate_limit": 3,
        "rate_period": timedelta(seconds=5),
    }
    with pytest.raises(ValidationError) as caught:
        task_limit_fields(concurrency=None, rate=None, concurrency_key=None, rate_key="r", **common)  # type: ignore[arg-type]
    assert caught.value.field == "rate_key"
