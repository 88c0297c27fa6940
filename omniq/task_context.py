"""The task the calling code runs in: ``omniq.current_task()`` and its progress reports.

A worker sets the current task (a context variable) around each call of a
task's function: on the event loop for coroutines, in the pool thread for
sync functions (the context is copied into the thread), and in the child
process with the process executor. Outside a task, :func:`current_task`
raises :class:`~omniq.errors.NoCurrentTask`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from omniq.errors import NoCurrentTask
from omniq.models.progress import check_progress

__all__ = ["CurrentTask", "ProgressSink", "current_task"]

#: Where a checked report goes: ``sink(done, total, message)``.
ProgressSink = Callable[[float, float | None, str | None], None]

_current: ContextVar[CurrentTask | None] = ContextVar("omniq_current_task", default=None)


class CurrentTask:
    """The running task, as its function sees it: id, attempt, queue, function, progress."""

    __slots__ = ("_sink", "attempt", "function", "id", "queue")

    def __init__(
        self, *, id: str, attempt: int, queue: str, function: str, sink: ProgressSink
    ) -> None:
        #: The task's id.
        self.id = id
        #: Which run of the task this is (1 for the first).
        self.attempt = attempt
        #: The queue the task was taken from.
        self.queue = queue
        #: The function's reference, ``package.module:qualname``.
        self.function = function
        self._sink = sink

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the task got: ``done`` of ``total`` (if known), and a message.

        Cheap enough to call in a tight loop: the worker keeps the last value
        and stores it a few times per second at most (and once more when the
        function returns). Raises :class:`~omniq.errors.ValidationError` when
        ``done < 0``, ``total <= 0``, ``done > total`` or the message is not
        a string of at most 1000 characters, and
        :class:`~omniq.errors.SerializationError` when the message holds text
        no database can store (a lone surrogate).
        """
        self._sink(*check_progress(done, total, message))

    def __repr__(self) -> str:
        return (
            f"CurrentTask(id={self.id!r}, attempt={self.attempt}, queue={self.queue!r}, "
            f"function={self.function!r})"
        )


def current_task() -> CurrentTask:
    """The task whose function is running here; raises NoCurrentTask outside one."""
    task = _current.get()
    if task is None:
        raise NoCurrentTask(
            "omniq.current_task() was called outside a task: it works only inside "
            "a task's function while a worker runs it"
        )
    return task
