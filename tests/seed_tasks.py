"""Task functions for the seed-API tests (module level: referable by workers)."""

from __future__ import annotations

CALLS: list[str] = []


def seed_add(a: int, b: int) -> int:
    return a + b


def flaky(fail_times: int, key: str) -> str:
    """Fail the first ``fail_times`` calls for ``key``, then succeed."""
    CALLS.append(key)
    if CALLS.count(key) <= fail_times:
        raise ValueError(f"attempt {CALLS.count(key)} of {key} failed")
    return "ok"


def always_fails() -> None:
    raise RuntimeError("always")
