"""The application side of the caller's-transaction tests: its own table on OmniQ's database."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from omniq.services._storage import Notifier

APP_METADATA = sa.MetaData()

#: The application's own table (created and dropped by each test).
orders = sa.Table(
    "app_orders",
    APP_METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item", sa.String(50), nullable=False),
)


def sync_url(db_url: str) -> str:
    """The URL of a sync engine on the same database (pysqlite, psycopg)."""
    url = sa.make_url(db_url)
    driver = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return url.set(drivername=driver).render_as_string(hide_password=False)


class NotifySpy:
    """Records each in-process wake-up with whether the caller's transaction was still open."""

    def __init__(self, notifier: Notifier, in_transaction: Callable[[], bool]) -> None:
        self.calls: list[bool] = []
        self._notifier = notifier
        self._real = notifier.notify
        self._in_transaction = in_transaction

    def __enter__(self) -> NotifySpy:
        def notify() -> None:
            self.calls.append(self._in_transaction())
            self._real()

        self._notifier.notify = notify  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        del self._notifier.notify


class WaitSpy:
    """Records the in-process waits of this process's workers: timeout, start, end, woken."""

    def __init__(self, notifier: Notifier) -> None:
        self.waits: list[dict[str, Any]] = []
        self._notifier = notifier
        self._real: Callable[[float, int | None], Awaitable[bool]] = notifier.wait

    def __enter__(self) -> WaitSpy:
        async def wait(timeout: float, since: int | None = None) -> bool:
            record: dict[str, Any] = {"timeout": timeout, "start": time.monotonic()}
            self.waits.append(record)
            record["woke"] = await self._real(timeout, since)
            record["end"] = time.monotonic()
            return bool(record["woke"])

        self._notifier.wait = wait  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        del self._notifier.wait

    def long_wait_in_progress(self, at_least: float) -> dict[str, Any] | None:
        for record in self.waits:
            if "end" not in record and record["timeout"] >= at_least:
                return record
        return None
