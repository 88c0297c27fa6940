"""``omniq workflow ID``: a workflow's kind, status and members (table, or ``--json``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from omniq.cli_output import emit, table
from omniq.errors import WorkflowNotFound

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ
    from omniq.models import Workflow

__all__ = ["workflow_command", "workflow_text"]


async def workflow_command(args: argparse.Namespace, oq: AsyncOmniQ) -> int:
    """Show one workflow; exit 4 (not found) for an unknown id."""
    workflow = await oq.get_workflow_async(args.workflow_id)
    if workflow is None:
        raise WorkflowNotFound(f"no workflow with id {args.workflow_id!r}")
    emit(args, workflow.as_dict(), lambda: workflow_text(workflow))
    return 0


def workflow_text(workflow: Workflow) -> str:
    """The human form: a header, then one row per member in position order."""
    position = {x.task_id: x.position for x in workflow.members}
    head = [
        f"workflow  {workflow.id}",
        f"kind      {workflow.kind}",
        f"status    {workflow.status.value}",
        f"created   {workflow.created_at.isoformat()}",
    ]
    if workflow.callback:
        head.append(f"callback  {workflow.callback}")
    rows = [
        (
            x.position,
            x.task_id,
            x.func,
            x.status,
            ",".join(str(position[i]) for i in x.inputs) or None,
            x.on_failure,
            x.error,
        )
        for x in workflow.members
    ]
    members = table(rows, ["#", "task", "func", "status", "inputs", "on_failure", "error"])
    return "\n".join(head) + "\n\n" + members
