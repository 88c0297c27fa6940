"""Workflow records: a chain, group or chord of tasks as :meth:`get_workflow` reads it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import attrs

from omniq.errors import WorkflowFailed

__all__ = ["Workflow", "WorkflowMember", "WorkflowStatus"]


class WorkflowStatus(StrEnum):
    """State of a workflow, derived from its members' outcomes."""

    RUNNING = "running"  # some member has not ended yet
    COMPLETED = "completed"  # every member completed
    FAILED = "failed"  # every member ended, and some did not complete


@attrs.frozen(kw_only=True)
class WorkflowMember:
    """One task of a workflow.

    ``inputs`` are the members whose results it receives (``input_mode``
    ``"one"``: as its first positional argument; ``"list"``: one list, in
    order), ``downstream`` those that receive its result, ``on_failure`` what
    happens to them if it ends badly. ``status`` is the task's status (its
    final one once it ended, kept after the task row is purged; None if the
    task row is gone before it ended).
    """

    task_id: str
    position: int
    func: str | None
    status: str | None
    #: True once the member ended (``status`` is then its final status).
    ended: bool
    inputs: tuple[str, ...]
    input_mode: str
    downstream: tuple[str, ...]
    on_failure: str
    remaining: int
    error: str | None = None


@attrs.frozen(kw_only=True)
class Workflow:
    """A workflow: its kind (chain, group, chord), status, members and result members."""

    id: str
    kind: str
    status: WorkflowStatus
    created_at: datetime
    members: tuple[WorkflowMember, ...]
    #: The members whose results make the workflow's result, in order.
    outputs: tuple[str, ...]
    #: ``"one"``: the result is the single output's; ``"list"``: a list of them.
    output_shape: str
    #: The chord's callback task id (None for other kinds).
    callback: str | None = None

    def result_from(self, results: Mapping[str, Any]) -> Any:
        """The workflow's result, given its outputs' results by task id.

        Raises :class:`WorkflowFailed` when an output did not complete, unless
        its ``on_failure`` is ``"continue"`` (its result is then None).
        """
        by_id = {x.task_id: x for x in self.members}
        values = []
        for task_id in self.outputs:
            member = by_id[task_id]
            if member.status != "completed" and member.on_failure != "continue":
                raise WorkflowFailed(
                    f"workflow {self.id}: member {task_id} is {member.status}"
                    + (f" ({member.error})" if member.error else "")
                )
            values.append(results.get(task_id))
        return values[0] if self.output_shape == "one" else values

    @property
    def task_ids(self) -> list[str]:
        """Every member's task id, in position order."""
        return [x.task_id for x in self.members]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``omniq workflow --json``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "callback": self.callback,
            "outputs": list(self.outputs),
            "output_shape": self.output_shape,
            "members": [
                {**attrs.asdict(x), "inputs": list(x.inputs), "downstream": list(x.downstream)}
                for x in self.members
            ],
        }
