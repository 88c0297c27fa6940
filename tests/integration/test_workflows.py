"""Workflows (issue 16): chain, group and chord on both engines, with a worker in
this process. The worker-process kill test is in test_workflow_processes.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from omniq import (
    AsyncOmniQ,
    Limit,
    OmniQ,
    OmniQError,
    Rate,
    TaskStatus,
    ValidationError,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowStatus,
    chain,
    chord,
    group,
)
from omniq.cli import main as cli_main
from omniq.db.schema import tasks as tasks_t
from omniq.db.schema import workflow_tasks, workflows
from omniq.errors import SerializationError
from tests import workflow_funcs as ft

pytestmark = pytest.mark.anyio

WAIT = 30


@pytest.fixture
async def oq(db_url: str) -> AsyncIterator[AsyncOmniQ]:
    app = AsyncOmniQ("flows", db_url, allow_modules=["tests.workflow_funcs"])
    async with app:
        yield app


async def run(oq: AsyncOmniQ) -> None:
    """Run every ready task (and what their completions release) to the end."""
    await oq.run_worker_async(concurrency=4, poll_interval=0.01, run_scheduler=False)


async def test_a_chain_of_five_passes_each_result_to_the_next_step(oq: AsyncOmniQ) -> None:
    s = oq.signature
    flow = chain(s(ft.add, 1, 1), s(ft.add, 10), s(ft.add, 100), s(ft.add, 1000), s(ft.args_of, 7))
    handle = await oq.enqueue_workflow_async(flow)
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == {"args": [1112, 7], "kwargs": {}}
    workflow = await oq.get_workflow_async(handle.id)
    assert workflow is not None
    assert workflow.kind == "chain"
    assert workflow.status is WorkflowStatus.COMPLETED
    assert [m.status for m in workflow.members] == ["completed"] * 5
    # Each step got the previous result as its first positional argument.
    firsts = [(await oq.get_task_async(t)).func_args[0] for t in workflow.task_ids]  # type: ignore[union-attr]
    assert firsts == [1, 2, 12, 112, 1112]


async def test_a_group_returns_every_result_in_group_order(oq: AsyncOmniQ) -> None:
    handle = await oq.enqueue_workflow_async(group(*(oq.signature(ft.add, i, i) for i in range(8))))
    assert await handle.status_async() is WorkflowStatus.RUNNING
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == [2 * i for i in range(8)]
    assert await handle.status_async() is WorkflowStatus.COMPLETED


async def test_a_chord_runs_its_callback_once_with_the_results_in_group_order(
    oq: AsyncOmniQ, tmp_path: Path
) -> None:
    log = tmp_path / "callback"
    members = [oq.signature(ft.add, i) for i in range(12)]
    handle = await oq.enqueue_workflow_async(
        chord(group(*members), oq.signature(ft.record_results, str(log)))
    )
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == 12
    assert [json.loads(x) for x in log.read_text().splitlines()] == [list(range(12))]
    workflow = await oq.get_workflow_async(handle.id)
    assert workflow is not None and workflow.kind == "chord"
    assert workflow.callback == workflow.task_ids[-1]
    assert workflow.members[-1].inputs == tuple(workflow.task_ids[:-1])


async def test_task_handle_signatures_and_a_chain_holding_a_chord(oq: AsyncOmniQ) -> None:
    add = oq.task(ft.add)
    total = oq.task(ft.total)
    flow = chain(add.s(1, 2), group(add.s(10), add.s(20)), total.s(), add.s(1000).set(priority=5))
    handle = await oq.enqueue_workflow_async(flow)
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == 13 + 23 + 1000
    workflow = await oq.get_workflow_async(handle.id)
    assert workflow is not None
    last = await oq.get_task_async(workflow.task_ids[-1])
    assert last is not None and last.priority == 5


async def test_results_flow_even_without_store_result_and_past_their_ttl(
    oq: AsyncOmniQ,
) -> None:
    quiet = {"store_result": False, "result_ttl": 0}
    members = [oq.signature(ft.add, i).set(**quiet) for i in range(4)]
    handle = await oq.enqueue_workflow_async(chord(members, oq.signature(ft.total)))
    await run(oq)
    await oq.cleanup_async()  # would purge results whose TTL ran out
    assert await handle.result_async(timeout=WAIT) == 6
    for task_id in (await handle.get_async()).task_ids[:-1]:
        assert await oq.get_result_async(task_id) is None


async def test_a_failing_member_cancels_what_depends_on_it_by_default(oq: AsyncOmniQ) -> None:
    s = oq.signature
    fail = s(ft.boom).set(max_retries=0)
    handle = await oq.enqueue_workflow_async(chain(s(ft.add, 1), fail, s(ft.add, 2), s(ft.add, 3)))
    members = [s(ft.add, 1), fail, s(ft.add, 3)]
    chord_handle = await oq.enqueue_workflow_async(chord(members, s(ft.total)))
    await run(oq)
    with pytest.raises(WorkflowFailed, match="cancelled"):
        await handle.result_async(timeout=WAIT)
    workflow = await handle.get_async()
    assert [m.status for m in workflow.members] == ["completed", "failed", "cancelled", "cancelled"]
    assert workflow.status is WorkflowStatus.FAILED
    assert "boom" in (workflow.members[1].error or "")
    with pytest.raises(WorkflowFailed):
        await chord_handle.result_async(timeout=WAIT)
    statuses = [m.status for m in (await chord_handle.get_async()).members]
    # The group's other members still ran; only the callback depended on the failure.
    assert statuses == ["completed", "failed", "completed", "cancelled"]


async def test_on_failure_continue_runs_the_dependents_with_none(oq: AsyncOmniQ) -> None:
    s = oq.signature
    fail = s(ft.boom).set(max_retries=0)
    handle = await oq.enqueue_workflow_async(
        chain(s(ft.add, 1), fail.set(on_failure="continue"), s(ft.args_of, "x"))
    )
    members = [s(ft.add, 1), fail, s(ft.add, 3)]
    chord_handle = await oq.enqueue_workflow_async(
        chord(members, s(ft.args_of), on_failure="continue")
    )
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == {"args": [None, "x"], "kwargs": {}}
    assert await chord_handle.result_async(timeout=WAIT) == {
        "args": [[1, None, 3]],
        "kwargs": {},
    }
    workflow = await chord_handle.get_async()
    assert [m.status for m in workflow.members] == ["completed", "failed", "completed", "completed"]
    assert workflow.status is WorkflowStatus.FAILED  # not every member completed
    # A group's failed member gives None in its result list under "continue".
    group_handle = await oq.enqueue_workflow_async(group(s(ft.add, 5), fail, on_failure="continue"))
    await run(oq)
    assert await group_handle.result_async(timeout=WAIT) == [5, None]


async def test_cancelling_a_waiting_member_cancels_the_rest(oq: AsyncOmniQ) -> None:
    s = oq.signature
    handle = await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, 2), s(ft.add, 3)))
    second = (await handle.get_async()).task_ids[1]
    assert await oq.cancel_async(second)
    await run(oq)
    assert [m.status for m in (await handle.get_async()).members] == [
        "completed",
        "cancelled",
        "cancelled",
    ]


async def count_rows(oq: AsyncOmniQ) -> tuple[int, int, int]:
    storage = oq.services.storage

    def body(conn: sa.Connection) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.select(sa.func.count()).select_from(x)).scalar_one()
            for x in (tasks_t, workflows, workflow_tasks)
        )

    return await storage.read(body, what="count")


async def test_enqueue_is_atomic_a_bad_member_stores_nothing(oq: AsyncOmniQ) -> None:
    s = oq.signature
    with pytest.raises(SerializationError):
        await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, object())))
    with pytest.raises(ValidationError, match="unique_key"):
        s(ft.add, 1).set(unique_key="k")
    with pytest.raises(ValidationError, match="on_failure"):
        chain(s(ft.add, 1), on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="chain"):
        chain(s(ft.add, 1), "not a signature")  # type: ignore[arg-type]
    assert await count_rows(oq) == (0, 0, 0)
    # A failure inside the transaction (here: the workflow row's id is taken, after
    # the tasks were inserted) rolls every task back.
    handle = await oq.enqueue_workflow_async(group(s(ft.add, 1), s(ft.add, 2)))
    assert await count_rows(oq) == (2, 1, 2)
    from omniq.workflows import plan_workflow

    plan = plan_workflow(
        group(s(ft.add, 3), s(ft.add, 4)), oq.build_task, handle.id, oq.services.storage.now()
    )
    with pytest.raises(OmniQError, match="same key"):
        await oq.services.workflows.enqueue_async(plan.tasks, plan.workflow, plan.members)
    assert await count_rows(oq) == (2, 1, 2)


async def cli(db_url: str, *argv: str) -> int:
    """The ``omniq`` command (its own event loop, so on a thread)."""
    return await anyio.to_thread.run_sync(cli_main, ["--url", db_url, *argv])


async def test_get_workflow_and_the_cli(
    oq: AsyncOmniQ, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await oq.get_workflow_async("missing") is None
    with pytest.raises(WorkflowNotFound):
        await oq.workflow("missing").result_async(timeout=1)
    with pytest.raises(WorkflowNotFound):
        await oq.workflow("missing").status_async()
    s = oq.signature
    handle = await oq.enqueue_workflow_async(chord([s(ft.add, 1), s(ft.add, 2)], s(ft.total)))
    workflow = await handle.get_async()
    assert [m.status for m in workflow.members] == ["pending", "pending", "waiting"]
    assert [m.ended for m in workflow.members] == [False, False, False]
    assert workflow.members[2].remaining == 2
    task = await oq.get_task_async(workflow.callback or "")
    assert task is not None and task.workflow_id == handle.id
    with pytest.raises(TimeoutError):
        await handle.result_async(timeout=0.05)
    await run(oq)
    capsys.readouterr()
    assert await cli(db_url, "workflow", handle.id) == 0
    out = capsys.readouterr().out
    assert "kind      chord" in out and "status    completed" in out
    assert out.count("tests.workflow_funcs:add") == 2 and "0,1" in out
    assert await cli(db_url, "--json", "workflow", handle.id) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "chord" and data["status"] == "completed"
    assert [m["task_id"] for m in data["members"]] == workflow.task_ids
    assert data["callback"] == workflow.callback
    assert await cli(db_url, "workflow", "missing") == 2
    assert "no workflow" in capsys.readouterr().err


def test_sync_twins(db_url: str) -> None:
    with OmniQ("flows", db_url, allow_modules=["tests.workflow_funcs"]) as oq:
        add = oq.task(ft.add)
        handle = oq.enqueue_workflow(chain(add.s(1, 2), add.s(3)))
        assert handle.status() is WorkflowStatus.RUNNING
        oq.run_worker(concurrency=2, poll_interval=0.01, run_scheduler=False)
        assert handle.result(timeout=WAIT) == 6
        workflow = oq.get_workflow(handle.id)
        assert workflow is not None and workflow.status is WorkflowStatus.COMPLETED
        assert oq.workflow(handle.id).get().task_ids == workflow.task_ids
        assert oq.signature(ft.add, 1).func == "tests.workflow_funcs:add"
        tasks = oq.list_tasks(status=TaskStatus.COMPLETED)
        assert {t.workflow_id for t in tasks} == {handle.id}


async def test_enqueue_in_the_callers_transaction(oq: AsyncOmniQ, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    s = oq.signature
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            tx = await conn.begin()
            await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, 2)), connection=conn)
            await tx.rollback()
        assert await count_rows(oq) == (0, 0, 0)
        async with engine.begin() as conn:
            handle = await oq.enqueue_workflow_async(
                chain(s(ft.add, 1), s(ft.add, 2)), connection=conn
            )
        assert await count_rows(oq) == (2, 1, 2)
    finally:
        await engine.dispose()
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == 3


async def test_deleting_or_clearing_members_settles_the_rest(oq: AsyncOmniQ) -> None:
    s = oq.signature
    handle = await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, 2), s(ft.add, 3)))
    _, second, third = (await handle.get_async()).task_ids
    assert await oq.services.queue.delete_task_async(second)
    workflow = await handle.get_async()
    assert [m.status for m in workflow.members] == ["pending", "cancelled", "cancelled"]
    assert (await oq.get_task_async(third)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    lenient = await oq.enqueue_workflow_async(
        chord([s(ft.add, 1), s(ft.add, 2)], s(ft.args_of), on_failure="continue")
    )
    await oq.services.queue.clear_async()
    workflow = await lenient.get_async()
    assert all(m.ended for m in workflow.members)
    assert workflow.status is WorkflowStatus.FAILED


async def test_eager_mode_runs_the_steps_inline() -> None:
    async with AsyncOmniQ("flows", mode="eager") as oq:
        add = oq.task(ft.add)
        total = oq.task(ft.total)
        handle = await oq.enqueue_workflow_async(
            chain(add.s(1, 1), chord([add.s(1), add.s(2)], total.s()), add.s(100))
        )
        assert await handle.status_async() is WorkflowStatus.COMPLETED
        assert await handle.result_async(timeout=0) == 2 + 1 + 2 + 2 + 100


async def test_enqueue_in_the_callers_orm_session(oq: AsyncOmniQ, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    s = oq.signature
    engine = create_async_engine(db_url)
    try:
        async with AsyncSession(engine) as session:
            await oq.enqueue_workflow_async(group(s(ft.add, 1), s(ft.add, 2)), session=session)
            await session.rollback()
        assert await count_rows(oq) == (0, 0, 0)
        async with AsyncSession(engine) as session, session.begin():
            handle = await oq.enqueue_workflow_async(
                group(s(ft.add, 1), s(ft.add, 2)), session=session
            )
    finally:
        await engine.dispose()
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == [1, 2]


async def test_retention_purges_a_workflow_with_its_last_task(oq: AsyncOmniQ) -> None:
    from datetime import timedelta

    s = oq.signature
    done = await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, 2)))
    await run(oq)
    assert await done.result_async(timeout=WAIT) == 3
    later = await oq.enqueue_workflow_async(chain(s(ft.add, 1), s(ft.add, 2)))
    assert await oq.services.queue.purge_finished_async(older_than=timedelta(0)) == 2
    assert await oq.get_workflow_async(done.id) is None
    assert await count_rows(oq) == (2, 1, 2)  # the unfinished workflow stays
    assert (await later.get_async()).status is WorkflowStatus.RUNNING


async def test_members_keep_their_tasks_limits_keyed_on_their_own_arguments(
    oq: AsyncOmniQ,
) -> None:
    """A task's declared limits hold for its workflow members too (issue 16: limits and
    workflows together); a chain step's key comes from its own arguments, after the
    previous result its call receives first."""
    per_tenant = Limit(1, key_arg="tenant")
    work = oq.task(ft.add, concurrency=Limit(2, key_arg="x"))
    step = oq.task(ft.tagged, concurrency=per_tenant, rate=Rate(100, per=60, key_arg="tenant"))
    handle = await oq.enqueue_workflow_async(
        chain(group(work.s(1, 1), work.s(1, 2), work.s(3)), step.s("acme"))
    )
    workflow = await oq.get_workflow_async(handle.id)
    assert workflow is not None
    tasks = [await oq.get_task_async(t) for t in workflow.task_ids]
    keys = [(t.concurrency_key, t.concurrency_max, t.rate_key) for t in tasks if t is not None]
    assert keys == [("1", 2, None), ("1", 2, None), ("3", 2, None), ("acme", 1, "acme")]
    await run(oq)
    assert await handle.result_async(timeout=WAIT) == "acme:[2, 3, 3]"

    # A key that would come from the previous result is refused, naming the field;
    # nothing of that workflow is stored.
    on_input = oq.task(ft.tagged, concurrency=Limit(1, key_arg="previous"))
    before = await oq.list_tasks_async(limit=1000)
    with pytest.raises(ValidationError, match=r"concurrency\.key_arg.*previous step's result"):
        await oq.enqueue_workflow_async(chain(work.s(1), on_input.s("acme")))
    with pytest.raises(ValidationError, match=r"concurrency\.key"):
        await oq.enqueue_workflow_async(
            chain(work.s(1), oq.task(ft.tagged, concurrency=Limit(1, key=str)).s("acme"))
        )
    assert len(await oq.list_tasks_async(limit=1000)) == len(before)
    # A per-call key needs no argument at all.
    fixed = await oq.enqueue_workflow_async(
        chain(work.s(5), on_input.s("acme").set(concurrency_key="shared"))
    )
    await run(oq)
    assert await fixed.result_async(timeout=WAIT) == "acme:5"
