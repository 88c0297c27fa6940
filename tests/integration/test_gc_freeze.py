"""A worker freezes its process's start-up heap out of the garbage collector's walk.

Once per process, before the first claim: ``Worker(gc_freeze=True)``, as
``omniq worker`` runs it (``--no-gc-freeze`` turns it off there); a Worker
built in your own process leaves the collector alone unless asked. Each case
runs in a process of its own: the freeze is per process, and this test
process must not depend on which test ran first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from omniq.errors import ConfigurationError
from omniq.services import Services
from omniq.worker import Worker
from omniq.worker.heap import YOUNG_THRESHOLD

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, sys, weakref

    from omniq.services import Services
    from omniq.worker import Worker

    async def main(url, freeze, young):
        if young is not None:
            gc.set_threshold(young, *gc.get_threshold()[1:])
        threshold_before = gc.get_threshold()
        services = await Services.open_async(url)
        try:
            ids = [
                await services.queue.enqueue_async(
                    services.queue.build_task("tests.worker_tasks:add_sync", [i, 1])
                )
                for i in range(3)
            ]
            before = gc.get_freeze_count()
            # Frozen objects are out of the collector's lists (gc.get_objects()).
            early = ["alive before the first worker"]
            options = {} if freeze is None else {"gc_freeze": freeze}
            worker = Worker(
                services.queue, services.results, services.events,
                allow_modules=["tests.worker_tasks"], **options,
            )
            stats = await worker.run_until_complete_async()
            after_first = gc.get_freeze_count()
            early_frozen = not any(o is early for o in gc.get_objects())
            # A second worker of the same process freezes nothing more.
            late = ["alive before the second worker"]
            again = Worker(
                services.queue, services.results, services.events,
                allow_modules=["tests.worker_tasks"], **options,
            )
            await again.run_until_complete_async()
            after_second = gc.get_freeze_count()
            late_frozen = not any(o is late for o in gc.get_objects())
            results = [
                (await services.results.get_async(task_id)).result["sum"] for task_id in ids
            ]
        finally:
            await services.close_async()

        # What is allocated after the freeze is still collected.
        class Node:
            pass

        node = Node()
        node.self = node
        ref = weakref.ref(node)
        del node
        gc.collect()
        print(json.dumps({
            "before": before,
            "after_first": after_first,
            "after_second": after_second,
            "early_frozen": early_frozen,
            "late_frozen": late_frozen,
            "completed": stats.completed,
            "results": results,
            "cycle_collected": ref() is None,
            "gc_enabled": gc.isenabled(),
            "threshold_before": threshold_before,
            "threshold_after": gc.get_threshold(),
        }))

    arg, young = sys.argv[2], sys.argv[3]
    asyncio.run(main(
        sys.argv[1],
        None if arg == "default" else arg == "on",
        None if young == "default" else int(young),
    ))
    """
)


def _run(url: str, freeze: str, young: int | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, url, freeze, "default" if young is None else str(young)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_worker_freezes_the_start_up_heap_once_per_process(db_url: str) -> None:
    report = _run(db_url, "on")
    assert report["completed"] == 3
    assert report["results"] == [1, 2, 3]
    assert report["before"] == 0
    # The start-up heap (SQLAlchemy, the schema, the services) is frozen...
    assert report["after_first"] > 10_000 and report["early_frozen"]
    # ... once: what came after the first worker started is not. (The count is
    # not compared: it moves as frozen objects are freed.)
    assert not report["late_frozen"]
    # The collector still runs, and collects what came later.
    assert report["gc_enabled"]
    assert report["cycle_collected"]
    # The youngest generation's threshold is raised from the interpreter's default
    # (700 up to Python 3.13); the older ones are kept.
    before = report["threshold_before"]
    assert before[0] < YOUNG_THRESHOLD
    assert report["threshold_after"] == [YOUNG_THRESHOLD, *before[1:]]


@pytest.mark.parametrize("young", [0, 50_000])
def test_a_worker_keeps_a_threshold_the_app_set_higher_or_to_zero(db_url: str, young: int) -> None:
    report = _run(db_url, "on", young)
    assert report["completed"] == 3
    assert report["threshold_before"][0] == young
    assert report["threshold_after"] == report["threshold_before"]


@pytest.mark.parametrize("freeze", ["default", "off"])
def test_a_worker_in_your_process_leaves_the_heap_alone(db_url: str, freeze: str) -> None:
    report = _run(db_url, freeze)
    assert report["completed"] == 3
    assert report["before"] == report["after_first"] == report["after_second"] == 0
    assert not report["early_frozen"] and not report["late_frozen"]
    assert report["cycle_collected"]
    assert report["threshold_after"] == report["threshold_before"]


@pytest.mark.parametrize("value", ["yes", 1, None])
async def test_gc_freeze_must_be_a_bool(svc: Services, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="gc_freeze must be True or False"):
        Worker(svc.queue, gc_freeze=value)
