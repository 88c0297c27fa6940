"""The seed's ``SQLiteEventStorage``: the event storage of a backend."""

from __future__ import annotations

from omniq.services import EventStorage, Services
from omniq.storage._component import StorageComponent
from omniq.sync import SyncEventStorage

__all__ = ["SQLiteEventStorage"]


class SQLiteEventStorage(StorageComponent, SyncEventStorage):
    """``SQLiteEventStorage(backend)``: every method of
    :class:`omniq.services.EventStorage`, blocking and as ``*_async``."""

    service_type = EventStorage

    def _make_service(self, services: Services) -> EventStorage:
        return services.events
