"""Time and id helpers: aware UTC instants, microsecond conversion, UUIDv7 ids."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta

from omniq.errors import ValidationError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """The current instant, timezone-aware, in UTC."""
    return datetime.now(UTC)


def require_aware(value: datetime, field: str) -> datetime:
    """Return ``value`` converted to UTC; reject naive datetimes naming ``field``."""
    if not isinstance(value, datetime):
        raise ValidationError(field, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(
            field,
            f"naive datetime {value.isoformat()} rejected; pass a timezone-aware "
            "datetime (e.g. datetime.now(timezone.utc))",
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            field, f"{value.isoformat()} is outside the years 1-9999 in UTC"
        ) from None


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The aware UTC datetime for microseconds since the epoch."""
    return EPOCH + timedelta(0, 0, value)  # positional: a third cheaper than microseconds=


def to_timedelta(value: object, field: str, *, allow_zero: bool = True) -> timedelta:
    """Lenient edge converter: seconds (int/float) or timedelta -> non-negative timedelta."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"expected a timedelta or seconds, got {value!r}")
    elif value != value or value in (float("inf"), float("-inf")):
        raise ValidationError(field, f"expected a finite number of seconds, got {value!r}")
    else:
        try:
            result = timedelta(seconds=value)
        except OverflowError as exc:
            raise ValidationError(field, f"duration {value!r} is out of range") from exc
    if result < timedelta(0) or (not allow_zero and result == timedelta(0)):
        raise ValidationError(
            field, f"must be {'positive' if not allow_zero else 'non-negative'}, got {result}"
        )
    return result


_uuid_lock = threading.Lock()
_last_ms = -1
_seq = 0
#: The id's first 13 characters (the millisecond and the version digit) for ``_last_ms``.
_prefix = ""
# Random digits are drawn from the OS 4 KiB at a time (one syscall per ~400 ids),
# as hex text, which is what an id is made of; a forked child drops what it
# inherited, so no two processes share them.
_ENTROPY_CHUNK = 4096
_entropy = ""
_entropy_at = 0
#: The variant digit (binary 10xx) made of a random hex digit's two low bits.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _after_fork_in_child() -> None:
    # A new lock: another thread of the parent may have held it at the fork, and
    # that thread does not exist here to release it. And no digits shared with
    # the parent.
    global _uuid_lock, _entropy, _entropy_at
    _uuid_lock = threading.Lock()
    _entropy, _entropy_at = "", 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _random_hex(n: int) -> str:
    """``n`` random hex digits from the OS random pool (caller holds ``_uuid_lock``)."""
    global _entropy, _entropy_at
    if _entropy_at + n > len(_entropy):
        _entropy, _entropy_at = os.urandom(_ENTROPY_CHUNK).hex(), 0
    chunk = _entropy[_entropy_at : _entropy_at + n]
    _entropy_at += n
    return chunk


def new_id() -> str:
    """A time-ordered UUIDv7 string: ids sort by creation time within a process.

    48 bits of Unix milliseconds, the version 7, a 12-bit sequence (random start
    each millisecond, counting up within it), the variant and 62 random bits.
    """
    global _last_ms, _seq, _prefix
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:
                ms += 1
                _seq = 0
        else:
            _seq = int(_random_hex(3), 16) & 0x3FF
        if ms != _last_ms:
            h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
            _prefix = f"{h[:8]}-{h[8:]}-7"
            _last_ms = ms
        seq = _seq
        prefix = _prefix
        rand = _random_hex(16)
    return f"{prefix}{seq:03x}-{_VARIANT[rand[0]]}{rand[1:4]}-{rand[4:]}"
