"""OpenTelemetry traces from a web request into a worker in another process (issue 15).

The "web app" (tests/tracing_spans.py) and the worker (tests/worker_process.py)
run as subprocesses with the SDK's provider writing spans to JSON-line files;
this test process never sets a tracer provider, so here tracing is off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing tests need opentelemetry-sdk (dev extra)")

from omniq import AsyncOmniQ, tracing
from omniq.models import TaskStatus
from omniq.services import Services
from tests.tracing_spans import read_spans
from tests.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "worker_process.py"
WEB = ROOT / "tests" / "tracing_spans.py"
DEADLINE = 60.0
FINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED}

Span = dict[str, Any]


def _env(spans: Path) -> dict[str, str]:
    return {**os.environ, "OMNIQ_TEST_SPANS": str(spans), "PYTHONPATH": str(ROOT)}


@pytest.fixture
def worker_process(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start a worker process (``executor``) exporting its spans to a file; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(spans: Path, executor: str = "async") -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                db_url,
                "--worker-id",
                f"traced-{len(started)}",
                "--executor",
                executor,
                "--allow",
                "tests.tracing_tasks",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=_env(spans),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _produce(db_url: str, spans: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(WEB), db_url],
        capture_output=True,
        cwd=ROOT,
        env=_env(spans),
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    ids: dict[str, Any] = json.loads(done.stdout)
    return ids


async def _wait_finished(db_url: str, ids: list[str], spans: Path, process_spans: int) -> None:
    services = await Services.open_async(db_url)
    try:

        async def finished() -> bool:
            for task_id in ids:
                task = await services.queue.get_task_async(task_id)
                if task is None or task.status not in FINAL:
                    return False
            return len(_named(read_spans(spans), "process default")) >= process_spans

        await wait_until(finished, "the tasks to finish and their spans", timeout=DEADLINE)
    finally:
        await services.close_async()


def _named(spans: list[Span], name: str) -> list[Span]:
    return [x for x in spans if x["name"] == name]


def _one(spans: list[Span], **match: Any) -> Span:
    found = [
        x
        for x in spans
        if all(x.get(k) == v or x["attributes"].get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (match, found)
    return found[0]


def _traceparent(stored: str | None) -> tuple[str, str]:
    """(trace id, span id) of a stored W3C trace context."""
    assert stored is not None
    version, trace_id, span_id, _flags = json.loads(stored)["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id


async def test_one_trace_from_a_web_request_into_a_worker_process(
    db_url: str, tmp_path: Path, worker_process: Any
) -> None:
    web_spans, worker_spans = tmp_path / "web.jsonl", tmp_path / "worker.jsonl"
    ids = _produce(db_url, web_spans)
    singles = [ids["async"], ids["sync"], ids["failing"]]
    worker_process(worker_spans)
    # 5 tasks that succeed at once, 2 attempts of the failing one.
    await _wait_finished(db_url, [*singles, *ids["batch"]], worker_spans, process_spans=7)

    web = read_spans(web_spans)
    worker = read_spans(worker_spans)
    request = _one(web, name="GET /checkout")
    trace_id = request["trace_id"]

    # The producer: one PRODUCER span per enqueue, children of the request.
    sends = _named(web, "send default")
    assert len(sends) == 4
    for send in sends:
        assert send["kind"] == "PRODUCER"
        assert (send["trace_id"], send["parent_id"]) == (trace_id, request["span_id"])
        assert send["attributes"]["messaging.system"] == "omniq"
        assert send["attributes"]["messaging.destination.name"] == "default"
        assert send["attributes"]["messaging.operation.type"] == "send"
    # enqueue_many: one span for the batch, with its size.
    batch_send = _one(sends, **{"messaging.batch.message_count": 3})
    assert "messaging.message.id" not in batch_send["attributes"]

    async with AsyncOmniQ(url=db_url) as oq:
        stored = {x: (await oq.get_task_async(x)) for x in [*singles, *ids["batch"]]}
    send_of: dict[str, Span] = {}
    for task_id, task in stored.items():
        assert task is not None
        stored_trace, parent = _traceparent(task.trace_context)
        assert stored_trace == trace_id
        send_of[task_id] = _one(sends, span_id=parent)
    for task_id in singles:
        assert send_of[task_id]["attributes"]["messaging.message.id"] == task_id
    assert all(send_of[x] is batch_send for x in ids["batch"])

    # The consumer, in another process: first attempts are children of their send span.
    assert {x["pid"] for x in worker}.isdisjoint({x["pid"] for x in web})
    for task_id, func in [
        (ids["async"], "charge_card"),
        (ids["sync"], "render_invoice"),
        *[(x, "charge_card") for x in ids["batch"]],
    ]:
        span = _one(worker, **{"messaging.message.id": task_id})
        assert span["kind"] == "CONSUMER"
        assert span["name"] == "process default"
        assert (span["trace_id"], span["parent_id"]) == (trace_id, send_of[task_id]["span_id"])
        assert span["links"] == []
        attributes = span["attributes"]
        assert attributes["messaging.system"] == "omniq"
        assert attributes["messaging.destination.name"] == "default"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["omniq.task.function"] == f"tests.tracing_tasks:{func}"
        assert attributes["omniq.task.attempt"] == 1
        assert attributes["omniq.task.outcome"] == "succeeded"
        assert span["status"] == "UNSET"

    # The task's own spans nest under ``process default``: async, and sync in a thread.
    process_async = _one(worker, **{"messaging.message.id": ids["async"]})
    charge = _one(worker, name="charge card", order="order-1")
    assert (charge["trace_id"], charge["parent_id"]) == (trace_id, process_async["span_id"])
    process_sync = _one(worker, **{"messaging.message.id": ids["sync"]})
    invoice = _one(worker, name="render invoice")
    assert (invoice["trace_id"], invoice["parent_id"]) == (trace_id, process_sync["span_id"])
    assert invoice["attributes"]["thread"].startswith("omniq-task")

    # The failing task: the error is on each attempt's span; the retry links, not a child.
    first, second = sorted(
        [x for x in worker if x["attributes"].get("messaging.message.id") == ids["failing"]],
        key=lambda x: x["attributes"]["omniq.task.attempt"],
    )
    failing_send = send_of[ids["failing"]]
    assert (first["trace_id"], first["parent_id"]) == (trace_id, failing_send["span_id"])
    assert first["attributes"]["omniq.task.outcome"] == "retried"
    assert second["attributes"]["omniq.task.attempt"] == 2
    assert second["attributes"]["omniq.task.outcome"] == "failed"
    assert second["parent_id"] is None
    assert second["trace_id"] != trace_id
    assert [(x["trace_id"], x["span_id"]) for x in second["links"]] == [
        (trace_id, failing_send["span_id"])
    ]
    for attempt in (first, second):
        assert attempt["status"] == "ERROR"
        assert attempt["attributes"]["error.type"] == "ValueError"
        (event,) = attempt["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "ValueError"
        assert event["attributes"]["exception.message"] == "card declined for order-1"


async def test_process_executor_traces_the_attempt_into_the_child(
    db_url: str, tmp_path: Path, worker_process: Any
) -> None:
    spans = tmp_path / "spans.jsonl"
    ids = _produce(db_url, spans)
    worker_process(spans, "process")
    await _wait_finished(
        db_url, [ids["async"], ids["sync"], ids["failing"], *ids["batch"]], spans, process_spans=7
    )
    everything = read_spans(spans)
    request = _one(everything, name="GET /checkout")
    process_sync = _one(everything, kind="CONSUMER", **{"messaging.message.id": ids["sync"]})
    assert process_sync["trace_id"] == request["trace_id"]
    assert process_sync["attributes"]["omniq.task.outcome"] == "succeeded"
    # The function ran in a child process; its span is a child of the worker's span.
    invoice = _one(everything, name="render invoice")
    assert invoice["pid"] != process_sync["pid"]
    assert invoice["attributes"]["pid"] == invoice["pid"]
    assert (invoice["trace_id"], invoice["parent_id"]) == (
        request["trace_id"],
        process_sync["span_id"],
    )
    # A failure in the child keeps its type on the worker's span.
    failed = [
        x
        for x in _named(everything, "process default")
        if x["attributes"]["messaging.message.id"] == ids["failing"]
    ]
    assert len(failed) == 2
    for attempt in failed:
        assert attempt["status"] == "ERROR"
        (event,) = attempt["events"]
        assert event["attributes"]["exception.type"] == "ValueError"


async def test_no_tracer_provider_stores_no_trace_context(db_url: str) -> None:
    # This process never sets a provider: tracing is off, nothing is stored or traced.
    assert tracing.tracer() is None
    async with AsyncOmniQ(url=db_url) as oq:
        one = await oq.enqueue_async("tests.tracing_tasks:render_invoice", ["order-1"])
        many = await oq.enqueue_many_async(
            [oq.build_task("tests.tracing_tasks:render_invoice", [f"o-{n}"]) for n in range(3)]
        )
        for task_id in [one, *many]:
            task = await oq.get_task_async(task_id)
            assert task is not None and task.trace_context is None
        stats = await oq.run_worker_async(burst=True, allow_modules=["tests.tracing_tasks"])
        assert stats.completed == 4


#: Runs OmniQ as if opentelemetry were not installed (its import fails).
WITHOUT_OTEL = """
import asyncio, importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())

from omniq import AsyncOmniQ, tracing
from omniq.services import hooks

async def main():
    assert hooks.send is None and tracing.tracer() is None
    async with AsyncOmniQ(url=sys.argv[1]) as oq:
        ids = [await oq.enqueue_async("tests.worker_tasks:always_fails", ["x"], max_retries=0)]
        ids += await oq.enqueue_many_async(
            [oq.build_task("tests.worker_tasks:add_sync", [1, 2]) for _ in range(2)]
        )
        stats = await oq.run_worker_async(burst=True, allow_modules=["tests.worker_tasks"])
        tasks = [await oq.get_task_async(x) for x in ids]
    assert stats.completed == 2 and stats.failed == 1, stats
    assert [x.trace_context for x in tasks] == [None, None, None]
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    print("ran without opentelemetry")

asyncio.run(main())
"""


def test_omniq_runs_without_opentelemetry(db_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, db_url],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "ran without opentelemetry"


def test_importing_omniq_does_not_import_opentelemetry() -> None:
    code = "import sys, omniq; print(sorted(m for m in sys.modules if 'opentelemetry' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=DEADLINE, check=True
    )
    assert done.stdout.decode().strip() == "[]"
