"""The task list's filter, sort and page, read from a query string (and written back).

Bad values raise :class:`~omniq.errors.ValidationError` naming the field; the
dashboard answers those with a 400 page.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

import attrs

from omniq.errors import ValidationError
from omniq.models import TaskFilter, TaskSort, TaskStatus

__all__ = ["DEAD_STATUSES", "Listing", "parse_listing"]

#: The statuses of the dead-letter view.
DEAD_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
_MAX_TEXT = 200


@attrs.frozen(kw_only=True)
class Listing:
    """A task listing as the page asked for it."""

    filter: TaskFilter
    sort: TaskSort
    cursor: str | None

    def query(self, **changes: str | None) -> str:
        """This listing's query string (``changes`` replace or, with None, drop keys)."""
        flt = self.filter
        pairs: list[tuple[str, str]] = []
        if flt.queue_name is not None:
            pairs.append(("queue", flt.queue_name))
        pairs += [("status", s.value) for s in TaskStatus if s in flt.statuses]
        for key, value in (("func", flt.func), ("tag", flt.tag), ("name", flt.name)):
            if value is not None:
                pairs.append((key, value))
        for key, when in (("from", flt.created_from), ("to", flt.created_to)):
            if when is not None:
                pairs.append((key, when.strftime("%Y-%m-%dT%H:%M:%S")))
        if self.sort is not TaskSort.NEWEST:
            pairs.append(("sort", self.sort.value))
        pairs = [(k, v) for k, v in pairs if k not in changes]
        pairs += [(k, v) for k, v in changes.items() if v is not None]
        return urlencode(pairs)

    def form_pairs(self) -> list[tuple[str, str]]:
        """The filter and sort as (name, value) pairs, for hidden form fields."""
        return parse_qsl(self.query())


def _text(params: Mapping[str, str], key: str) -> str | None:
    value = params.get(key, "").strip()
    if not value:
        return None
    if len(value) > _MAX_TEXT:
        raise ValidationError(key, f"at most {_MAX_TEXT} characters")
    if "\x00" in value:
        raise ValidationError(key, "must not contain NUL")
    return value


def _instant(params: Mapping[str, str], key: str) -> datetime | None:
    value = _text(params, key)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            key, f"not a date and time (YYYY-MM-DDTHH:MM, UTC): {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-23:00 is past year 9999 in UTC
        raise ValidationError(key, f"out of range: {value!r}") from None


def parse_listing(
    params: Mapping[str, str],
    statuses: list[str],
    *,
    allowed: frozenset[TaskStatus] | None = None,
) -> Listing:
    """The listing of a query string (``statuses``: every ``status`` value given).

    ``allowed`` limits the statuses (the dead-letter view); with none
    chosen, all of ``allowed`` are listed.
    """
    chosen: set[TaskStatus] = set()
    for value in statuses:
        if not value:
            continue
        try:
            status = TaskStatus(value)
        except ValueError:
            names = ", ".join(s.value for s in allowed or TaskStatus)
            raise ValidationError("status", f"unknown status {value!r} (one of: {names})") from None
        if allowed is not None and status not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise ValidationError("status", f"{value!r} is not listed here (one of: {names})")
        chosen.add(status)
    if not chosen and allowed is not None:
        chosen = set(allowed)
    sort_text = params.get("sort") or TaskSort.NEWEST.value
    try:
        sort = TaskSort(sort_text)
    except ValueError:
        names = ", ".join(s.value for s in TaskSort)
        raise ValidationError("sort", f"unknown order {sort_text!r} (one of: {names})") from None
    created_from = _instant(params, "from")
    created_to = _instant(params, "to")
    if created_from and created_to and created_from >= created_to:
        raise ValidationError("to", "must be after 'from'")
    flt = TaskFilter(
        queue_name=_text(params, "queue"),
        statuses=frozenset(chosen),
        func=_text(params, "func"),
        tag=_text(params, "tag"),
        name=_text(params, "name"),
        created_from=created_from,
        created_to=created_to,
    )
    return Listing(filter=flt, sort=sort, cursor=_text(params, "cursor"))
