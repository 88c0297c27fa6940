"""Task functions of the workflow tests (chain, group, chord).

Workers run them as ``"tests.workflow_funcs:<name>"``; worker processes get
``--allow tests.workflow_funcs``.
"""

from __future__ import annotations

import json
from typing import Any

from tests.worker_tasks import append_line


def add(x: int, y: int = 0) -> int:
    """x + y."""
    return x + y


def args_of(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """What it was called with."""
    return {"args": list(args), "kwargs": kwargs}


def boom(*_args: Any) -> None:
    """Always fails."""
    raise ValueError("boom")


def total(results: list[int | None]) -> int:
    """The sum of the results that are not None."""
    return sum(x for x in results if x is not None)


def record_results(results: list[Any], path: str) -> int:
    """Append the results it got as one JSON line to ``path``; return how many."""
    append_line(path, json.dumps(results))
    return len(results)


def tagged(previous: Any, tenant: str) -> str:
    """The previous result, tagged with the tenant (a chain step whose key is ``tenant``)."""
    return f"{tenant}:{previous}"
