"""A user's task module, type-checked by tests/typecheck/test_mypy.py (never imported by pytest)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import omniq
from omniq import AsyncOmniQ, OmniQ, TaskHandle

oq = OmniQ("typed")
aoq = AsyncOmniQ("typed_async")


@oq.task(queue_name="emails", max_retries=3)
def send_email(to: str, subject: str, *, urgent: bool = False) -> str:
    return f"{to}: {subject} ({urgent})"


@oq.task
def add(x: int, y: int) -> int:
    return x + y


@aoq.task
async def fetch(url: str, retries: int = 1) -> dict[str, int]:
    await asyncio.sleep(0)
    return {url: retries}


@omniq.task
def process(item_id: int) -> str:
    return str(item_id)


@oq.periodic(interval=timedelta(minutes=5), name="typed-cleanup")
def cleanup(days: int = 7) -> int:
    return days


def direct_calls() -> None:
    text: str = send_email("ada@example.org", "hello", urgent=True)
    total: int = add(1, 2)
    name: str = process(3)
    kept: int = cleanup()
    print(text, total, name, kept)


def sync_enqueues() -> list[str]:
    handle: TaskHandle[[int, int], int] = add
    return [
        send_email.enqueue("ada@example.org", subject="Welcome"),
        send_email.with_options(priority=5, run_in=60).enqueue("bob@example.org", "Hi"),
        handle.enqueue(1, 2),
        add.enqueue(1, y=2),
        cleanup.enqueue(days=3),
    ]


async def async_enqueues() -> list[str]:
    coro_result = await fetch("https://example.org", retries=2)
    assert coro_result
    return [
        await fetch.enqueue_async("https://example.org"),
        await fetch.with_options(queue_name="web").enqueue_async("https://example.org", 3),
    ]
