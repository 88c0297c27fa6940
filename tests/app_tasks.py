"""Task functions for the facade tests."""

from __future__ import annotations

import asyncio

CALLS: list[object] = []


def add(a: int, b: int) -> int:
    return a + b


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def record(value: object) -> object:
    CALLS.append(value)
    return value


def explode() -> None:
    raise RuntimeError("kaboom")
