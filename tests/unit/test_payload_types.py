"""JSON type tags: everyday Python values round-trip; others are refused by name."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from omniq.errors import SerializationError
from omniq.payload_types import ENVELOPE, FORMAT_VERSION
from omniq.repositories._base import PayloadCodec
from omniq.serialization import JsonSerializer

EVERYDAY: list[Any] = [
    datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    date(2026, 2, 28),
    time(23, 59, 59, 999999),
    time(8, 0, tzinfo=UTC),
    timedelta(days=-3, seconds=5, microseconds=7),
    UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("0.1"),
    Decimal("-1E+30"),
    b"\x00\xffbinary",
    b"",
    {1, 2, 3},
    frozenset({"a", "b"}),
    (1, "two", (3.0, None)),
    (),
    {1: "one", 2.5: "x", None: 0, False: "f"},
    {(1, 2): "pair", date(2026, 1, 1): "new year", frozenset({1}): "fs"},
    {"$t": "not a tag", "$omniq": 1},  # dicts that look like tags or the envelope
    {"nested": [{"when": date(2026, 1, 1), "ids": {UUID(int=1)}}], "plain": [1, "x"]},
]


@pytest.mark.parametrize("value", EVERYDAY, ids=lambda v: type(v).__name__)
def test_everyday_values_round_trip_with_their_types(value: Any) -> None:
    serializer = JsonSerializer()
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert type(back) is type(value)


def test_a_call_with_tagged_arguments_round_trips() -> None:
    codec = PayloadCodec()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    payload = codec.encode_call("json", (when, (1, 2)), {"amount": Decimal("9.99"), "tags": {"a"}})
    args, kwargs, _ = codec.decode_call("json", payload)
    assert args == (when, (1, 2)) and type(args[1]) is tuple
    assert kwargs == {"amount": Decimal("9.99"), "tags": {"a"}}


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text().filter(lambda k: k != ENVELOPE), inner, max_size=4)
    ),
    max_leaves=20,
)


@hypothesis_settings(database=None)
@given(PLAIN)
def test_plain_json_is_written_exactly_as_before_tags(value: Any) -> None:
    """Plain payloads keep the old format byte for byte (and its speed: one json.dumps)."""
    text = JsonSerializer().dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    assert JsonSerializer().loads(text) == value


def test_payloads_written_in_the_old_format_still_read() -> None:
    """Rows written before tags existed: plain JSON text, tuples stored as lists."""
    codec = PayloadCodec()
    old_call = '{"a":[[1,2],"2026-01-01T00:00:00+00:00"],"k":{"n":{"1":"one"}},"c":[3]}'
    args, kwargs, cb = codec.decode_call("json", old_call)
    assert args == ([1, 2], "2026-01-01T00:00:00+00:00")
    assert kwargs == {"n": {"1": "one"}} and cb == (3,)
    assert codec.decode_value("json", '{"total":3,"items":[1,2]}') == {"total": 3, "items": [1, 2]}


def test_the_envelope_is_versioned() -> None:
    text = JsonSerializer().dumps({1, 2})
    assert json.loads(text)[ENVELOPE] == FORMAT_VERSION
    future = json.dumps({ENVELOPE: FORMAT_VERSION + 1, "v": 1})
    with pytest.raises(SerializationError, match="format version 2"):
        JsonSerializer().loads(future)
    with pytest.raises(SerializationError, match="unknown type tag 'martian'"):
        JsonSerializer().loads('{"$omniq":1,"v":{"$t":"martian","v":1}}')
    with pytest.raises(SerializationError, match="malformed 'uuid'"):
        JsonSerializer().loads('{"$omniq":1,"v":{"$t":"uuid","v":"nope"}}')


class Point:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((1, Point()), {}, "argument 2 (func_args[1])"),
        ((), {"origin": Point()}, "keyword argument 'origin' (func_kwargs['origin'])"),
        (([{"p": Point()}],), {}, "argument 1 (func_args[0][0]['p'])"),
        ((), {"at": datetime(2026, 1, 1)}, "keyword argument 'at' (func_kwargs['at'])"),
        (({1: Point()},), {}, "argument 1 (func_args[0][1])"),
    ],
)
def test_unsupported_arguments_are_refused_by_name(
    args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> None:
    with pytest.raises(SerializationError) as info:
        PayloadCodec().encode_call("json", args, kwargs)
    assert str(info.value).startswith(where + ": "), str(info.value)


def test_unsupported_types_are_named() -> None:
    with pytest.raises(SerializationError, match=r"type tests\.unit\.test_payload_types\.Point"):
        PayloadCodec().encode_call("json", (Point(),), {})
    with pytest.raises(SerializationError, match=r"naive datetime"):
        JsonSerializer().dumps([datetime(2026, 1, 1)])
    with pytest.raises(SerializationError, match=r"result\['x'\]\[0\]: a value of type object"):
        PayloadCodec().encode_value("json", {"x": [object()]}, "result")
