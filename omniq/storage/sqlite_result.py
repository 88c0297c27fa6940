"""The seed's ``SQLiteResultStorage``: the result storage of a backend."""

from __future__ import annotations

from omniq.services import ResultStorage, Services
from omniq.storage._component import StorageComponent
from omniq.sync import SyncResultStorage

__all__ = ["SQLiteResultStorage"]


class SQLiteResultStorage(StorageComponent, SyncResultStorage):
    """``SQLiteResultStorage(backend)``: every method of
    :class:`omniq.services.ResultStorage`, blocking and as ``*_async``."""

    service_type = ResultStorage

    def _make_service(self, services: Services) -> ResultStorage:
        return services.results
