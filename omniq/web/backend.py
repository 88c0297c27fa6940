"""The dashboard's handle on an OmniQ app: its services, called on the loop that owns them.

An :class:`~omniq.AsyncOmniQ` is opened on first use, on the web server's
event loop. A blocking :class:`~omniq.OmniQ` runs on its own portal thread:
its services are called there (connections belong to the loop that opened
them), and the web loop awaits the outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from omniq.app import AsyncOmniQ
from omniq.models import Settings
from omniq.services import Services
from omniq.services.browse import TaskBrowser
from omniq.services.overview import QueueOverview
from omniq.sync import OmniQ

__all__ = ["Backend"]

T = TypeVar("T")


class Backend:
    """Runs service calls for the dashboard."""

    def __init__(self, oq: AsyncOmniQ | OmniQ) -> None:
        if not isinstance(oq, AsyncOmniQ | OmniQ):
            raise TypeError(f"create_app expects an AsyncOmniQ or OmniQ, got {type(oq).__name__}")
        self._sync = oq if isinstance(oq, OmniQ) else None
        self.app = oq.app if isinstance(oq, OmniQ) else oq
        #: True once this dashboard opened the app (it then closes it at shutdown).
        self.opened_here = False

    @property
    def settings(self) -> Settings:
        """The app's settings."""
        return self.app.settings

    async def call(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        """``await fn(services)`` on the event loop that owns the app's connections."""
        if self.app.loop is None:
            if self._sync is not None:
                await asyncio.to_thread(self._sync.open)
            else:
                await self.app.open_async()
            self.opened_here = True
        owner = self.app.loop
        if owner is None or owner is asyncio.get_running_loop():
            return await fn(self.app.services)

        async def run() -> T:
            return await fn(self.app.services)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), owner))

    async def close(self) -> None:
        """Close the app if this dashboard opened it (at the server's shutdown)."""
        if not self.opened_here:
            return
        self.opened_here = False
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
        else:
            await self.app.close_async()

    async def browse(self, fn: Callable[[TaskBrowser], Awaitable[T]]) -> T:
        """``await fn(browser)`` with a task browser over the app's services."""
        return await self.call(lambda s: fn(TaskBrowser(s.storage, s.queue)))

    async def overview(self, fn: Callable[[QueueOverview], Awaitable[T]]) -> T:
        """``await fn(reader)`` with the overview reader over the app's services."""
        return await self.call(lambda s: fn(QueueOverview(s.storage)))
