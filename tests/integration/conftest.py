"""Fixtures of the service-layer tests: open Services on each engine's test database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from omniq.models import Settings
from omniq.services import Services

ServicesFactory = Callable[..., Awaitable[Services]]


@pytest.fixture
async def svc(db_url: str) -> AsyncIterator[Services]:
    """Services (queue, results, events) on a migrated, empty database."""
    services = await Services.open_async(db_url)
    try:
        yield services
    finally:
        await services.close_async()


@pytest.fixture
async def open_services(db_url: str) -> AsyncIterator[ServicesFactory]:
    """Open more Services on the same database (own engines); all closed at the end."""
    opened: list[Services] = []

    async def factory(settings: Settings | None = None, **kwargs: Any) -> Services:
        services = await Services.open_async(db_url, settings, **kwargs)
        opened.append(services)
        return services

    try:
        yield factory
    finally:
        for services in opened:
            await services.close_async()
