"""The TaskAttempt record: one failed run of a task, kept beside its final outcome."""

from __future__ import annotations

from datetime import datetime

import attrs

from omniq.models._fields import aware, name_str, non_negative_int
from omniq.models.error import TaskError


@attrs.frozen(kw_only=True)
class TaskAttempt:
    """A failed attempt of ``task_id``: its number, when it ran, where, and its error.

    ``error.retryable`` (also :attr:`will_retry`) says whether the task was
    scheduled to run again after it.
    """

    task_id: str = attrs.field(validator=name_str)
    attempt: int = attrs.field(validator=non_negative_int)
    error: TaskError
    started_at: datetime | None = attrs.field(default=None, validator=aware)
    finished_at: datetime = attrs.field(validator=aware)
    worker_id: str | None = None

    @property
    def will_retry(self) -> bool:
        """True if the task was to run again after this attempt."""
        return self.error.retryable
