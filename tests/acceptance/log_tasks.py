"""Task functions for the worker-log acceptance tests (imported by `omniq worker --app`)."""

from __future__ import annotations

import time
from pathlib import Path


def ok(x: int) -> int:
    return x * 2


def kaboom() -> None:
    raise ValueError("kaboom")


def flaky(marker: str) -> str:
    """Fails on its first attempt, succeeds on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted", encoding="utf-8")
        raise RuntimeError("first attempt fails")
    return "ok"


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"
