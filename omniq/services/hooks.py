"""Hooks through which an optional part (tracing) takes part in the services' work.

Services stay free of tracing code (DESIGN.md §6): they call the hooks
installed here, each None unless an optional part installed it at import
(:mod:`omniq.tracing` installs :data:`send` when OpenTelemetry is
installed). A hook decides per call whether it wants to take part; when it
returns None the service does its work directly, at no other cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from omniq.models import Task

__all__ = ["SendHook", "WriteTasks", "send"]

#: Writes new tasks (one enqueue or one batch) and returns their ids.
WriteTasks = Callable[[list[Task]], Awaitable[list[str]]]


class SendHook(Protocol):
    """Wraps the writing of new tasks: may stamp them (``attrs.evolve``) before ``write``."""

    def __call__(self, tasks: list[Task], write: WriteTasks) -> Awaitable[list[str]] | None:
        """The wrapped write's ids, or None to let the service call ``write(tasks)`` itself."""
        ...


#: Around every enqueue (``enqueue_async`` and ``enqueue_many_async``, one call per batch).
send: SendHook | None = None
