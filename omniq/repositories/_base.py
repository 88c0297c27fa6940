"""Shared pieces of the repositories: error translation and payload coding."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cattrs
import sqlalchemy.exc as sa_exc

from omniq.errors import (
    DatabaseBusy,
    DatabaseError,
    DatabaseMigrated,
    DatabaseUnavailable,
    DuplicateTask,
    OmniQError,
    SerializationError,
    StorageFull,
    UnsafePayload,
    ValidationError,
)
from omniq.payload_types import UnsupportedValue, describe
from omniq.serialization import SerializerRegistry

#: What the trigger of revision 0012 raises when a task is inserted into a database
#: that ``omniq migrate-db`` flagged (the same text as in that revision).
MIGRATED = "omniq: this database was migrated away"
#: The target named until the enqueue reads the flag (see Enqueue.migrated_error).
UNKNOWN_TARGET = "another database"

_LOCKED = re.compile(r"database (table )?is locked|database is busy", re.I)
_FULL = re.compile(r"database or disk is full|disk full|no space left|DiskFull", re.I)


def is_locked_error(exc: sa_exc.DBAPIError) -> bool:
    """True when a driver error says the database was locked by another writer."""
    return bool(_LOCKED.search(str(exc.orig)))


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise driver errors as OmniQ's typed errors; ``what`` names the operation."""
    try:
        yield
    except OmniQError:
        raise
    except sa_exc.IntegrityError as exc:
        text = str(exc.orig)
        if MIGRATED in text:
            raise DatabaseMigrated(UNKNOWN_TARGET) from exc
        if "unique" in text.lower() or "duplicate" in text.lower():
            raise DuplicateTask(f"{what}: a record with the same key already exists") from exc
        raise ValidationError(what, f"constraint violated: {text}") from exc
    except sa_exc.DBAPIError as exc:
        text = str(exc.orig)
        if MIGRATED in text:
            raise DatabaseMigrated(UNKNOWN_TARGET) from exc
        if _LOCKED.search(text):
            raise DatabaseBusy(f"{what}: database stayed locked: {text}") from exc
        if _FULL.search(text) or type(exc.orig).__name__ == "DiskFullError":
            raise StorageFull(f"{what}: database is full: {text}") from exc
        if exc.connection_invalidated or _connection_state(exc.orig):
            raise DatabaseUnavailable(f"{what}: connection lost: {text}") from exc
        if "0x00" in text and "invalid byte sequence" in text:
            raise ValidationError(what, "PostgreSQL text cannot contain NUL (\\x00)") from exc
        cause = _argument_cause(exc.orig)
        if isinstance(cause, UnicodeEncodeError):
            raise _not_utf8(what, cause) from exc
        if isinstance(cause, TypeError | ValueError | OverflowError):
            # asyncpg refused a value for its column's type (an int where an id
            # belongs, a list...): the caller's mistake, named as such.
            raise ValidationError(what, f"a value of the wrong type or range: {cause}") from exc

        raise DatabaseError(f"{what}: {type(exc.orig).__name__}: {text}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError(f"{what}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        # asyncpg raises these itself while connecting (refused, unreachable, timed out).
        raise DatabaseUnavailable(f"{what}: database unreachable: {exc}") from exc
    except UnicodeEncodeError as exc:
        # The SQLite driver encodes text itself (e.g. a filename decoded with surrogateescape).
        raise _not_utf8(what, exc) from exc


def _not_utf8(what: str, exc: UnicodeEncodeError) -> SerializationError:
    return SerializationError(
        f"{what}: text cannot be stored as UTF-8 ({exc.reason}: "
        f"{exc.object[exc.start : exc.end]!r})"
    )


def _sqlstates(error: BaseException | None) -> Iterator[str]:
    """The SQLSTATEs a driver's error carries (it and the errors it chains)."""
    seen = 0
    while error is not None and seen < 8:
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str):
            yield state
        error, seen = error.__cause__ or error.__context__, seen + 1


def _connection_state(error: BaseException | None) -> bool:
    """True when the driver's error carries a SQLSTATE of a lost or refused connection:
    class 08 (a connection closed in the middle of the handshake, say, which SQLAlchemy
    does not mark invalidated) or 57P01-57P03 (the server shutting down or starting)."""
    return any(
        state.startswith("08") or state in ("57P01", "57P02", "57P03")
        for state in _sqlstates(error)
    )


def is_transient_conflict(error: BaseException) -> bool:
    """True for a PostgreSQL transaction rolled back for a conflict with another:
    a deadlock (40P01) or a serialization failure (40001). Nothing of it was
    written; the same transaction run again normally succeeds."""
    return any(state in ("40P01", "40001") for state in _sqlstates(error))


def _argument_cause(error: BaseException | None) -> BaseException | None:
    """The Python error behind a driver's "invalid input for query argument" (asyncpg
    encodes arguments itself and chains the error that stopped it), else None."""
    seen = 0
    while error is not None and seen < 8:
        if "invalid input for query argument" in str(error):
            cause = error.__cause__
            while cause is not None and "invalid input for query argument" in str(cause):
                cause = cause.__cause__
            return cause
        error, seen = error.__cause__, seen + 1
    return None


def root_message(exc: BaseException) -> str:
    """The message of the first leaf of a cattrs validation error (else of ``exc``)."""
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        return root_message(exc.exceptions[0])
    return str(exc)


_SIGNED = "hmac-sha256:"


class PayloadCodec:
    """Encodes argument payloads with the chosen serializer; decodes what is allowed.

    With a ``signing_key``, call payloads are stored as
    ``hmac-sha256:<mac>:<text>`` (the MAC covers the serializer name and the
    text), and a payload that is unsigned or does not verify is refused with
    :class:`UnsafePayload` before it is deserialized.
    """

    def __init__(
        self, serializers: SerializerRegistry | None = None, signing_key: str | None = None
    ) -> None:
        self.serializers = serializers or SerializerRegistry()
        self._key = signing_key.encode("utf-8") if signing_key else None

    def _mac(self, serializer: str, subject: str, text: str) -> str:
        assert self._key is not None
        message = f"{serializer}\n{subject}\n{text}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _sign(self, serializer: str, subject: str, text: str) -> str:
        if self._key is None:
            return text
        return f"{_SIGNED}{self._mac(serializer, subject, text)}:{text}"

    def _verify(self, serializer: str, subject: str, payload: str) -> str:
        if payload.startswith(_SIGNED):
            mac, _, text = payload[len(_SIGNED) :].partition(":")
            expected = self._mac(serializer, subject, text) if self._key is not None else mac
            if not hmac.compare_digest(mac, expected):
                raise UnsafePayload(
                    "payload signature does not match (tampered, or signed with another key); "
                    "not deserialized"
                )
            return text
        if self._key is not None:
            raise UnsafePayload("payload is not signed but a signing key is configured; refused")
        return payload

    def encode_call(
        self,
        serializer: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callback_args: tuple[Any, ...] = (),
        *,
        subject: str = "",
    ) -> str:
        """Serialize a call's arguments into one payload text.

        ``subject`` (the function and callback references) is covered by the
        signature too, so a signed task cannot be redirected to another function.
        """
        body: dict[str, Any] = {}
        if args:
            body["a"] = list(args)
        if kwargs:
            body["k"] = kwargs
        if callback_args:
            body["c"] = list(callback_args)
        try:
            text = self.serializers.get(serializer).dumps(body)
        except UnsupportedValue as exc:
            raise SerializationError(f"{_argument(exc.path)}: {exc.problem}") from exc
        except SerializationError as exc:
            # Keep the subclass: a refused serializer stays an UnsafePayload.
            fields = "func_args/func_kwargs" + ("/callback_args" if callback_args else "")
            raise type(exc)(f"{fields}: {exc}") from exc
        return self._sign(serializer, subject, text)

    def decode_call(
        self, serializer: str, payload: str, *, subject: str = ""
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]:
        """Deserialize a payload into (args, kwargs, callback_args)."""
        text = self._verify(serializer, subject, payload)
        body = self.serializers.get(serializer).loads(text)
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
        except UnsupportedValue as exc:
            raise SerializationError(f"{describe(exc.path, field)}: {exc.problem}") from exc
        except SerializationError as exc:
            raise SerializationError(f"{field}: {exc}") from exc

    def decode_value(self, serializer: str, data: str) -> Any:
        """Deserialize one value (a result)."""
        return self.serializers.get(serializer).loads(data)


_BODY_FIELDS = {"a": "func_args", "k": "func_kwargs", "c": "callback_args"}


def _argument(path: tuple[str | int, ...]) -> str:
    """Where an unsupported value sits in a call: ``argument 2 (func_args[1])`` and the like."""
    if not path or path[0] not in _BODY_FIELDS:
        return describe(path, "payload")
    field, rest = _BODY_FIELDS[str(path[0])], path[1:]
    if not rest:
        return field
    where = describe(rest, field)
    if field == "func_args" and isinstance(rest[0], int):
        return f"argument {rest[0] + 1} ({where})"
    if field == "func_kwargs":
        return f"keyword argument {rest[0]!r} ({where})"
    return where
