"""Serialization: payload serializers, callable references and the row converter.

- Payloads (arguments, results) go through a :class:`Serializer`. JSON is the
  default; pickle exists only as an explicit opt-in (``allow_pickle``) and is
  never used to *read* a payload unless the reader opted in too.
- Functions are stored as ``"package.module:qualname"`` references.
- One cattrs :data:`converter` turns rows into models and models into rows.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import cattrs

from omniq.errors import SerializationError, UnsafePayload
from omniq.models._fields import check_utf8
from omniq.payload_types import UnsupportedValue, envelope, plain_json, unwrap
from omniq.refs import callable_ref, resolve_ref

__all__ = [
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerRegistry",
    "callable_ref",
    "converter",
    "resolve_ref",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns Python values into text for a payload column, and back."""

    name: str

    def dumps(self, value: Any) -> str:
        """Serialize ``value``; raise :class:`SerializationError` if it cannot."""
        ...

    def loads(self, data: str) -> Any:
        """Deserialize text produced by :meth:`dumps`."""
        ...


def _reject_non_finite(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_non_finite)


class JsonSerializer:
    """Strict JSON (no NaN/Infinity) with type tags for everyday Python values.

    Plain JSON values are written as plain JSON text; values holding
    datetimes, dates, times, timedeltas, UUIDs, Decimals, bytes, sets,
    tuples or dicts with non-string keys are written in a versioned envelope
    with type tags and read back as those types (see :mod:`omniq.payload_types`).
    Anything else is refused with a :class:`SerializationError` naming where
    it sits. Text written before tags existed reads unchanged.
    """

    name = "json"

    def dumps(self, value: Any) -> str:
        """Serialize ``value`` as compact JSON (tagged where it needs tags)."""
        try:
            text = plain_json(value)
            if text is None:
                text = json.dumps(
                    envelope(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False
                )
        except UnsupportedValue:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                exc = ValueError("nested too deeply")
            raise SerializationError(
                f"payload is not JSON-serializable ({exc}); pass JSON data "
                "(dict/list/str/int/float/bool/None) or opt in to the pickle serializer"
            ) from exc
        check_utf8(text, "payload")
        return text

    def loads(self, data: str) -> Any:
        """Parse JSON text (and the tagged envelope, if it is one)."""
        try:
            return unwrap(_DECODER.decode(data))
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"stored payload is not valid JSON: {exc}") from exc


class PickleSerializer:
    """Pickle (base64 text). Unsafe with untrusted data: opt-in only."""

    name = "pickle"

    def dumps(self, value: Any) -> str:
        """Pickle ``value`` and encode it as base64 text."""
        try:
            return base64.b64encode(pickle.dumps(value, protocol=5)).decode("ascii")
        except Exception as exc:
            raise SerializationError(f"payload cannot be pickled: {exc}") from exc

    def loads(self, data: str) -> Any:
        """Decode and unpickle text produced by :meth:`dumps`."""
        try:
            return pickle.loads(base64.b64decode(data))
        except Exception as exc:
            raise SerializationError(f"stored pickle payload cannot be loaded: {exc}") from exc


class SerializerRegistry:
    """The serializers one process may use; pickle only when ``allow_pickle``."""

    def __init__(self, *, default: str = "json", allow_pickle: bool = False) -> None:
        self._by_name: dict[str, Serializer] = {"json": JsonSerializer()}
        if allow_pickle:
            self._by_name["pickle"] = PickleSerializer()
        if default not in self._by_name:
            raise UnsafePayload(
                f"serializer {default!r} is not enabled"
                + ("; set allow_pickle=True to opt in" if default == "pickle" else "")
            )
        self.default = self._by_name[default]
        self.allow_pickle = allow_pickle

    def register(self, serializer: Serializer) -> None:
        """Make a custom serializer available by its name."""
        self._by_name[serializer.name] = serializer

    def get(self, name: str) -> Serializer:
        """The serializer called ``name``; :class:`UnsafePayload` if not enabled."""
        try:
            return self._by_name[name]
        except KeyError:
            if name == "pickle":
                raise UnsafePayload(
                    "payload was written with the pickle serializer, which this process "
                    "has not enabled (allow_pickle=False); it was not unpickled"
                ) from None
            raise SerializationError(f"unknown serializer {name!r}") from None


# --- rows <-> models ---------------------------------------------------------


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    # Rows already carry datetime/timedelta objects (the column types convert);
    # pass them through and reject anything else.
    conv.register_structure_hook(datetime, _structure_passthrough(datetime))
    conv.register_structure_hook(timedelta, _structure_passthrough(timedelta))
    conv.register_unstructure_hook(datetime, lambda v: v)
    conv.register_unstructure_hook(timedelta, lambda v: v)
    conv.register_unstructure_hook(Enum, lambda v: v.value)
    # Records validate and convert their own fields (attrs converters and
    # validators), so rows are structured by calling the class directly:
    # the same checks, a fraction of the cost on the claim path.
    from omniq.models import Schedule, Task, TaskEvent, TaskResult

    for record in (Task, Schedule, TaskResult, TaskEvent):
        conv.register_structure_hook(record, _structure_record)
    return conv


def _structure_record(data: Mapping[str, Any], cls: type[Any]) -> Any:
    return cls(**data)


def _structure_passthrough(kind: type) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _type: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return value

    return hook


converter = _make_converter()
