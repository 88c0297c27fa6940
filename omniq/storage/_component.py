"""The base of the seed's components: a backend, a lazily opened service, both call styles.

A component is built without I/O (``SQLiteTaskQueue(backend, queues)``, as
the seed builds it). Its blocking methods (``enqueue``) are the sync twins of
:mod:`omniq.sync`; its awaitable methods (``enqueue_async``) open the backend
if needed and run the service's method on OmniQ's portal loop, where the
backend's connections live, so they work from any event loop.

A component outlives its backend's ``close``: its service is made over the
services the backend has open now, and made again over new ones once the
backend was closed (opened again by ``initialize`` or by the component's
next call), on every engine. Closed services stay closed
(:class:`~omniq.errors.DatabaseClosed`); a worker running on them stops
with that error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from omniq._portal import run_in_portal
from omniq.services import Services

if TYPE_CHECKING:
    from omniq.backends.sqlite import SQLBackend

__all__ = ["Component", "StorageComponent"]


class Component:
    """A part of a backend: ``name(...)`` blocks, ``await name_async(...)`` does not."""

    #: The class of the service (its ``*_async`` methods are this component's).
    service_type: type[Any]

    def __init__(self, backend: SQLBackend) -> None:
        self.backend = backend
        self.project_name = backend.project_name
        self._service: Any = None
        #: The backend's services ``_service`` was made over.
        self._bound: Services | None = None

    def _make_service(self, services: Services) -> Any:
        """The async service this component fronts (built once the backend is open)."""
        raise NotImplementedError

    def _keeps_service(self) -> bool:
        """True to keep the service made before although the backend reopened (a worker
        still running keeps its own, to be stopped)."""
        return False

    def _service_for(self, services: Services) -> Any:
        """This component's service over ``services`` (made again when they changed)."""
        if self._service is None or (self._bound is not services and not self._keeps_service()):
            self._service = self._make_service(services)
            self._bound = services
        return self._service

    @property
    def _async(self) -> Any:
        # The blocking twins call methods of ``self._async`` (omniq.sync).
        return self._service_for(self.backend.services)

    @_async.setter
    def _async(self, service: Any) -> None:
        self._service = service
        self._bound = self.backend.open_services

    async def _async_service(self) -> Any:
        return self._service_for(await self.backend.services_async())

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if (
            not name.endswith("_async")
            or name.startswith("_")
            or not callable(getattr(self.service_type, name, None))
        ):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        async def method(*args: Any, **kwargs: Any) -> Any:
            service = await self._async_service()
            target = getattr(service, name)
            in_caller_tx = kwargs.get("connection") is not None or kwargs.get("session") is not None
            if in_caller_tx and hasattr(service, "_ready_for_caller_tx"):
                # A write in the application's own transaction: its connection
                # belongs to this loop (asyncpg's do), so the write stays here, once
                # the service is ready for it (made ready on the portal's loop).
                if not service._ready_for_caller_tx():
                    await run_in_portal(service._prepare_caller_tx_async)
                return await target(*args, **kwargs)
            return await run_in_portal(target, *args, **kwargs)

        method.__name__ = name
        return method


class StorageComponent(Component):
    """A queue or storage: ``start``/``stop`` open the backend / do nothing (as the seed's)."""

    def start(self) -> None:
        """Open the backend (connect, check or migrate the schema)."""
        self.backend.initialize()

    async def start_async(self) -> None:
        """Awaitable :meth:`start`."""
        await self._async_service()

    def stop(self) -> None:
        """Nothing to release: the backend owns the connections (close the backend)."""

    async def stop_async(self) -> None:
        """Awaitable :meth:`stop`."""
