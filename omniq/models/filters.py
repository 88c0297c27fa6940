"""TaskFilter: which tasks a listing (or a bulk action) covers. No I/O."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import attrs

from omniq.models.enums import TaskStatus


class TaskSort(StrEnum):
    """Orders of a task listing (each a keyset over indexed columns)."""

    NEWEST = "newest"  # created_at DESC, id DESC
    OLDEST = "oldest"  # created_at, id
    PRIORITY = "priority"  # priority DESC, run_at, id: the order workers claim in


@attrs.frozen(kw_only=True)
class TaskFilter:
    """Every given criterion must hold; empty means "any".

    ``func`` and ``name`` match substrings (case-insensitive); ``tag`` is one
    exact tag; ``created_from`` / ``created_to`` bound ``created_at``
    (inclusive, exclusive).
    """

    queue_name: str | None = None
    statuses: frozenset[TaskStatus] = frozenset()
    func: str | None = None
    tag: str | None = None
    name: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def narrowed(self, statuses: frozenset[TaskStatus]) -> TaskFilter | None:
        """This filter restricted to ``statuses`` too; None if no task can match both."""
        wanted = statuses if not self.statuses else self.statuses & statuses
        return attrs.evolve(self, statuses=wanted) if wanted else None
