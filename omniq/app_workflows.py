"""The facade's workflow methods (a part of :class:`omniq.AsyncOmniQ`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from omniq._time import new_id
from omniq.models import Task
from omniq.models.workflow import Workflow
from omniq.services import Services
from omniq.workflows import Node, Signature, WorkflowHandle, plan_workflow

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["WorkflowMethods"]


class WorkflowMethods:
    """Build signatures, enqueue workflows (chain, group, chord) and read them back."""

    mode: str

    async def _svc(self, caller_tx: bool = False) -> Services:
        raise NotImplementedError

    def _remember(self, func: Callable[..., Any] | str) -> None:
        raise NotImplementedError

    def build_task(self, func: Callable[..., Any] | str, *args: Any, **options: Any) -> Task:
        raise NotImplementedError

    async def _run_eagerly(self, task_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def signature(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Signature:
        """A workflow member calling ``func(*args, **kwargs)`` (a function or a
        ``"module:qualname"`` reference); enqueue options go through ``.set(...)``."""
        self._remember(func)
        return Signature(func, args, kwargs, call=None if isinstance(func, str) else func)

    async def enqueue_workflow_async(
        self,
        workflow: Node,
        *,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> WorkflowHandle:
        """Enqueue a ``chain``, ``group`` or ``chord`` in one transaction: every task
        or none. With ``connection=`` / ``session=``, in that open transaction of
        the application's. Returns its :class:`WorkflowHandle`."""
        svc = await self._svc(caller_tx=connection is not None or session is not None)
        workflow_id = new_id()
        plan = plan_workflow(
            workflow,
            lambda func, *args, **options: self.build_task(func, *args, **options),
            workflow_id,
            svc.storage.now(),
        )
        await svc.workflows.enqueue_async(
            plan.tasks, plan.workflow, plan.members, connection=connection, session=session
        )
        if self.mode == "eager" and connection is None and session is None:
            await self._run_eagerly([x.id for x in plan.tasks if not x.is_final])
        return WorkflowHandle(self, workflow_id)  # type: ignore[arg-type]

    def workflow(self, workflow_id: str) -> WorkflowHandle:
        """The handle of an enqueued workflow, by id."""
        return WorkflowHandle(self, workflow_id)  # type: ignore[arg-type]

    async def get_workflow_async(self, workflow_id: str) -> Workflow | None:
        """The workflow with ``workflow_id`` (kind, status, members and their
        statuses), or None."""
        return await (await self._svc()).workflows.get_async(workflow_id)
