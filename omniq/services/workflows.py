"""Workflows: enqueue one atomically, read it back, wait for its result.

The transaction pieces run when members end are in
:mod:`omniq.services.flow_steps`; the user-facing shapes (chain, group,
chord) are compiled into tasks and rows by :mod:`omniq.workflows`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from omniq._time import to_timedelta
from omniq.errors import WorkflowNotFound
from omniq.models import Task
from omniq.models._fields import lookup_key
from omniq.models.workflow import Workflow, WorkflowMember, WorkflowStatus
from omniq.services._storage import Storage
from omniq.services.queue import TaskQueue

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["WorkflowService"]


class WorkflowService:
    """Workflows over one database: written by the queue's enqueue, read here."""

    def __init__(self, storage: Storage, queue: TaskQueue) -> None:
        self.storage = storage
        self.queue = queue

    async def enqueue_async(
        self,
        tasks: Sequence[Task],
        workflow: Mapping[str, Any],
        members: Sequence[Mapping[str, Any]],
        *,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> str:
        """Write a workflow's tasks, its row and its member rows in one transaction;
        return its id. With ``connection=`` / ``session=``: in that transaction."""

        def write(conn: sa.Connection) -> None:
            self.storage.workflows.insert(conn, workflow, members)

        await self.queue.enqueue_together_async(
            tasks, write, connection=connection, session=session
        )
        return str(workflow["id"])

    async def get_async(self, workflow_id: str) -> Workflow | None:
        """The workflow with ``workflow_id`` and its members, or None."""
        lookup_key(workflow_id, "workflow_id")
        found = await self.storage.read(self._read(workflow_id), what="get workflow")
        return None if found is None else found[0]

    async def result_async(self, workflow_id: str, timeout: timedelta | float | None = None) -> Any:
        """Wait until the members that make the workflow's result ended; return it.

        Raises :class:`TimeoutError` after ``timeout``, :class:`WorkflowFailed`
        when a result member did not complete (see :meth:`Workflow.result_from`).
        """
        lookup_key(workflow_id, "workflow_id")
        limit = None if timeout is None else to_timedelta(timeout, "timeout").total_seconds()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        poll = 0.005
        notifier = self.storage.notifier
        while True:
            seen = notifier.generation  # a completion while we read wakes the wait below
            found = await self.storage.read(self._read(workflow_id), what="wait for workflow")
            if found is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
            workflow, results = found
            ended = {x.task_id for x in workflow.members if x.ended}
            if ended.issuperset(workflow.outputs):
                return workflow.result_from(results)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"workflow {workflow_id} has no result after {timeout}s")
            await notifier.wait(poll if left is None else min(poll, left), seen)
            poll = min(poll * 2, 0.5)

    def _read(self, workflow_id: str) -> Any:
        storage = self.storage

        def body(conn: sa.Connection) -> tuple[Workflow, dict[str, Any]] | None:
            row = storage.workflows.get(conn, workflow_id)
            if row is None:
                return None
            rows = storage.workflows.member_rows(conn, workflow_id)
            members = tuple(_member(x) for x in rows)
            outputs = tuple(row["outputs"])
            codec = storage.results.codec
            results = {
                x["task_id"]: codec.decode_value(x["serializer"], x["result"])
                for x in rows
                if x["task_id"] in outputs and x["result"] is not None
            }
            workflow = Workflow(
                id=row["id"],
                kind=row["kind"],
                status=_status(members),
                created_at=row["created_at"],
                members=members,
                outputs=outputs,
                output_shape=row["output_shape"],
                callback=outputs[0] if row["kind"] == "chord" else None,
            )
            return workflow, results

        return body


def _member(row: sa.RowMapping) -> WorkflowMember:
    return WorkflowMember(
        task_id=row["task_id"],
        position=row["position"],
        func=row["func"],
        status=row["status"] or row["task_status"],
        ended=row["status"] is not None,
        inputs=tuple(row["inputs"]),
        input_mode=row["input_mode"],
        downstream=tuple(row["downstream"]),
        on_failure=row["on_failure"],
        remaining=row["remaining"],
        error=row["error"],
    )


def _status(members: Sequence[WorkflowMember]) -> WorkflowStatus:
    if not all(x.ended for x in members):
        return WorkflowStatus.RUNNING
    if all(x.status == "completed" for x in members):
        return WorkflowStatus.COMPLETED
    return WorkflowStatus.FAILED
