"""The TaskProgress record: the last progress a running task reported, and its checks."""

from __future__ import annotations

import math
from datetime import datetime

import attrs

from omniq.errors import ValidationError
from omniq.models._fields import aware, check_utf8, name_str, non_negative_int

__all__ = ["MAX_PROGRESS_MESSAGE", "TaskProgress", "check_progress"]

#: The longest progress message accepted (characters).
MAX_PROGRESS_MESSAGE = 1000


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past the largest float
        raise ValidationError(field, f"out of range: {value!r}") from None
    if not math.isfinite(number):
        raise ValidationError(field, f"expected a finite number, got {value!r}")
    return number


def check_progress(
    done: object, total: object = None, message: object = None
) -> tuple[float, float | None, str | None]:
    """``(done, total, message)`` checked: done >= 0, total > 0 or None, done <= total.

    Raises :class:`~omniq.errors.ValidationError` naming the bad field.
    """
    value = _number("done", done)
    if value < 0:
        raise ValidationError("done", f"must be >= 0, got {done!r}")
    whole: float | None = None
    if total is not None:
        whole = _number("total", total)
        if whole <= 0:
            raise ValidationError("total", f"must be > 0 (or None), got {total!r}")
        if value > whole:
            raise ValidationError("done", f"{done!r} is more than total {total!r}")
    if message is not None:
        if not isinstance(message, str):
            raise ValidationError("message", f"expected a string or None, got {message!r}")
        if len(message) > MAX_PROGRESS_MESSAGE:
            raise ValidationError(
                "message", f"{len(message)} characters is longer than {MAX_PROGRESS_MESSAGE}"
            )
        if "\x00" in message:
            raise ValidationError("message", "cannot contain NUL (\\x00)")
        check_utf8(message, "message")
    return value, whole, message


@attrs.frozen(kw_only=True)
class TaskProgress:
    """The last progress ``task_id`` reported from inside its function.

    ``attempt`` is the run that reported it (a retried task starts over from
    its first report); ``total`` is None when the task gave no total.
    """

    task_id: str = attrs.field(validator=name_str)
    attempt: int = attrs.field(validator=non_negative_int)
    done: float
    total: float | None = None
    message: str | None = None
    updated_at: datetime = attrs.field(validator=aware)

    @property
    def fraction(self) -> float | None:
        """``done / total`` (0.0 to 1.0), or None without a total."""
        if self.total is None:
            return None
        return self.done / self.total

    @property
    def percent(self) -> float | None:
        """``100 * done / total``, or None without a total."""
        fraction = self.fraction
        return None if fraction is None else 100.0 * fraction
