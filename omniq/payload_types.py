"""Payload types: the JSON serializer's type tags for the values people pass every day.

Plain JSON values (str, int, float, bool, None, lists, dicts with str keys)
are stored as plain JSON text, exactly as before tags existed. A value that
holds anything else is stored in a versioned envelope::

    {"$omniq": 1, "v": <the value, with tagged parts>}

where a tagged part is ``{"$t": <tag>, "v": <JSON>}``: aware ``datetime``,
``date``, ``time``, ``timedelta``, ``UUID``, ``Decimal``, ``bytes``, ``set``,
``frozenset``, ``tuple``, and dicts whose keys are not all strings (their
items as a list of ``[key, value]`` pairs). Text without the envelope is read
as plain JSON, so rows written before tags existed read unchanged. Any other
type is refused with :class:`UnsupportedValue`, which names where it sits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from omniq.errors import SerializationError

__all__ = [
    "ENVELOPE",
    "FORMAT_VERSION",
    "UnsupportedValue",
    "envelope",
    "from_tagged",
    "is_plain",
    "jsonable",
    "plain_json",
    "to_tagged",
    "unwrap",
    "wrap",
]

#: The key of the envelope of a payload holding tagged values.
ENVELOPE = "$omniq"
#: The version of the tagged format this OmniQ writes (and the newest it reads).
FORMAT_VERSION = 1
_TAG = "$t"
_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})

SUPPORTED = (
    "JSON values, aware datetime, date, time, timedelta, UUID, Decimal, bytes, "
    "set, frozenset, tuple, and dicts with keys of these types"
)


class UnsupportedValue(SerializationError):
    """A value of a type the JSON serializer cannot store; ``path`` says where it sits."""

    def __init__(self, path: tuple[str | int, ...], problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{describe(path)}: {problem}")


def describe(path: tuple[str | int, ...], root: str = "value") -> str:
    """``root['key'][2]``: where a part of a payload sits."""
    return root + "".join(f"[{p!r}]" for p in path)


class _NotPlain(Exception):
    """Raised by the plain encoder's ``default`` hook: the value needs tags."""


def _not_plain(_value: Any) -> Any:
    raise _NotPlain


#: Plain JSON at C speed; any non-JSON type stops it (then the value is tagged).
_PLAIN_ENCODER = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_not_plain
)
_PLAIN_DECODER = json.JSONDecoder()


def plain_json(value: Any) -> str | None:
    """The JSON text of ``value`` if it is plain JSON (stored untagged, as before tags
    existed), else None (it needs tags).

    Kept cheap for plain payloads: the C encoder refuses non-JSON types; tuples
    and non-str keys (which it would silently turn into lists and strings) are
    found by a shallow type check, or, for deeper values, by reading the text
    back and comparing (C speed too).
    """
    if type(value) is dict and ENVELOPE in value:
        return None
    try:
        text = _PLAIN_ENCODER.encode(value)
    except (_NotPlain, TypeError):  # TypeError: a key of a type JSON has no keys for
        return None
    # Short text: reading it back is cheapest; long text: a type check first.
    if (len(text) > 512 and _shallow_plain(value)) or _PLAIN_DECODER.decode(text) == value:
        return text
    return None


def _flat(items: Any) -> bool:
    return set(map(type, items)) <= _SCALARS


def _container_items(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return value
    if kind is dict and set(map(type, value)) <= _STR:
        return value.values()
    return None


def _shallow_plain(value: Any, depth: int = 4) -> bool:
    """True when ``value`` is a scalar, or lists/str-keyed dicts of scalars nested at most
    ``depth`` deep with few containers (a call's ``{"a": [...], "k": {...}}``).
    False means: not known (the caller compares the text read back)."""
    if type(value) in _SCALARS:
        return True
    items = _container_items(value)
    if items is None or depth == 0:
        return False
    if _flat(items):
        return True
    nested = [x for x in items if type(x) not in _SCALARS]
    if len(nested) > 8:
        return False
    return all(_shallow_plain(x, depth - 1) for x in nested)


def is_plain(value: Any) -> bool:
    """True when ``value`` is plain JSON (would be stored untagged)."""
    try:
        return plain_json(value) is not None
    except (ValueError, RecursionError):
        return False


def wrap(value: Any) -> Any:
    """The JSON-ready form of ``value``: itself if plain, else the tagged envelope."""
    if is_plain(value):
        return value
    return envelope(value)


def envelope(value: Any) -> dict[str, Any]:
    """The versioned envelope of ``value`` with its non-JSON parts tagged."""
    return {ENVELOPE: FORMAT_VERSION, "v": to_tagged(value, ())}


def unwrap(data: Any) -> Any:
    """The value of parsed JSON ``data``: the envelope's value decoded, or ``data`` itself."""
    if type(data) is dict and ENVELOPE in data:
        version = data[ENVELOPE]
        if type(version) is not int or version > FORMAT_VERSION or version < 1:
            raise SerializationError(
                f"stored payload has format version {version!r}; this OmniQ reads "
                f"versions up to {FORMAT_VERSION} (upgrade OmniQ to read it)"
            )
        return from_tagged(data.get("v"))
    return data


def jsonable(value: Any) -> Any:
    """A JSON-safe rendering of ``value`` for logs and events (tags kept, never raises)."""
    try:
        return value if is_plain(value) else to_tagged(value, ())
    except (SerializationError, RecursionError):
        return repr(value)


def to_tagged(value: Any, path: tuple[str | int, ...]) -> Any:
    """``value`` with every non-JSON part tagged; :class:`UnsupportedValue` if one cannot be."""
    if isinstance(value, str | int | float) or value is None:
        return value  # bool and int/str/float subclasses (IntEnum, StrEnum) included
    kind = type(value)
    if kind is list:
        return [to_tagged(item, (*path, i)) for i, item in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: to_tagged(v, (*path, k)) for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [
                [to_tagged(k, (*path, _key_name(k))), to_tagged(v, (*path, _key_name(k)))]
                for k, v in value.items()
            ],
        }
    if kind is tuple:
        return {_TAG: "tuple", "v": [to_tagged(x, (*path, i)) for i, x in enumerate(value)]}
    if kind is set or kind is frozenset:
        return {_TAG: kind.__name__, "v": [to_tagged(x, (*path, "<item>")) for x in value]}
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise UnsupportedValue(
                path, "naive datetime (no timezone): give it one, e.g. datetime.now(UTC)"
            )
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    raise UnsupportedValue(
        path,
        f"a value of type {_type_name(kind)} cannot be stored as JSON "
        f"(supported: {SUPPORTED}); convert it, or opt in to the pickle serializer",
    )


def _type_name(kind: type) -> str:
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _key_name(key: Any) -> str | int:
    return key if isinstance(key, str | int) else repr(key)


def from_tagged(data: Any) -> Any:
    """The value that :func:`to_tagged` tagged."""
    kind = type(data)
    if kind is list:
        return [from_tagged(x) for x in data]
    if kind is not dict:
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: from_tagged(v) for k, v in data.items()}
    decode = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decode is None:
        raise SerializationError(f"stored payload has an unknown type tag {tag!r}")
    try:
        return decode(data.get("v"))
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise SerializationError(f"stored payload has a malformed {tag!r} value: {exc}") from exc


def _decode_dict(items: Any) -> dict[Any, Any]:
    return {from_tagged(k): from_tagged(v) for k, v in items}


def _decode_timedelta(parts: Any) -> timedelta:
    days, seconds, micros = parts
    return timedelta(days=days, seconds=seconds, microseconds=micros)


def _decode_datetime(text: Any) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dict": _decode_dict,
    "tuple": lambda v: tuple(from_tagged(x) for x in v),
    "set": lambda v: {from_tagged(x) for x in v},
    "frozenset": lambda v: frozenset(from_tagged(x) for x in v),
    "datetime": _decode_datetime,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": _decode_timedelta,
    "uuid": UUID,
    "decimal": Decimal,
    "bytes": lambda v: base64.b64decode(v.encode("ascii"), validate=True),
}
