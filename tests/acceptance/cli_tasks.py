"""Task functions for the CLI acceptance tests (imported by `omniq worker --app`)."""

from __future__ import annotations

import time


def add(a: int, b: int) -> int:
    return a + b


def greet(name: str = "world") -> str:
    return f"hello {name}"


def slow(seconds: float, marker: str) -> str:
    with open(marker, "a", encoding="utf-8") as fh:
        fh.write("started\n")
    time.sleep(seconds)
    return "slept"


def boom() -> None:
    raise RuntimeError("boom")
