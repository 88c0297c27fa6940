"""Shared pieces of the repositories: error translation and payload coding."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cattrs
import sqlalchemy.exc as sa_exc

from omniq.errors import (
    DatabaseBusy,
    DatabaseError,
    DuplicateTask,
    OmniQError,
    SerializationError,
    StorageFull,
    ValidationError,
)
from omniq.serialization import SerializerRegistry

_LOCKED = re.compile(r"database (table )?is locked|database is busy", re.I)
_FULL = re.compile(r"database or disk is full|disk full|no space left|DiskFull", re.I)


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise driver errors as OmniQ's typed errors; ``what`` names the operation."""
    try:
        yield
    except OmniQError:
        raise
    except sa_exc.IntegrityError as exc:
        text = str(exc.orig)
        if "unique" in text.lower() or "duplicate" in text.lower():
            raise DuplicateTask(f"{what}: a record with the same key already exists") from exc
        raise ValidationError(what, f"constraint violated: {text}") from exc
    except sa_exc.DBAPIError as exc:
        text = str(exc.orig)
        if _LOCKED.search(text):
            raise DatabaseBusy(f"{what}: database stayed locked: {text}") from exc
        if _FULL.search(text) or type(exc.orig).__name__ == "DiskFullError":
            raise StorageFull(f"{what}: database is full: {text}") from exc
        raise DatabaseError(f"{what}: {type(exc.orig).__name__}: {text}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError(f"{what}: {exc}") from exc


def root_message(exc: BaseException) -> str:
    """The message of the first leaf of a cattrs validation error (else of ``exc``)."""
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        return root_message(exc.exceptions[0])
    return str(exc)


class PayloadCodec:
    """Encodes argument payloads with the chosen serializer; decodes what is allowed."""

    def __init__(self, serializers: SerializerRegistry | None = None) -> None:
        self.serializers = serializers or SerializerRegistry()

    def encode_call(
        self,
        serializer: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callback_args: tuple[Any, ...] = (),
    ) -> str:
        """Serialize a call's arguments into one payload text."""
        body: dict[str, Any] = {}
        if args:
            body["a"] = list(args)
        if kwargs:
            body["k"] = kwargs
        if callback_args:
            body["c"] = list(callback_args)
        try:
            return self.serializers.get(serializer).dumps(body)
        except SerializationError as exc:
            raise SerializationError(f"func_args/func_kwargs: {exc}") from exc

    def decode_call(
        self, serializer: str, payload: str
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]:
        """Deserialize a payload into (args, kwargs, callback_args)."""
        body = self.serializers.get(serializer).loads(payload)
        if not isinstance(body, dict):
            raise SerializationError("stored payload is not an object")
        args, kwargs, cb_args = body.get("a", []), body.get("k", {}), body.get("c", [])
        if (
            not isinstance(args, list | tuple)
            or not isinstance(kwargs, dict)
            or not isinstance(cb_args, list | tuple)
        ):
            raise SerializationError("stored payload has malformed args/kwargs/callback args")
        return tuple(args), kwargs, tuple(cb_args)

    def encode_value(self, serializer: str, value: Any, field: str) -> str:
        """Serialize one value (a result) into text."""
        try:
            return self.serializers.get(serializer).dumps(value)
        except SerializationError as exc:
            raise SerializationError(f"{field}: {exc}") from exc

    def decode_value(self, serializer: str, data: str) -> Any:
        """Deserialize one value (a result)."""
        return self.serializers.get(serializer).loads(data)
