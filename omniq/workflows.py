"""Workflows: signatures, ``chain``, ``group``, ``chord`` and the handle of an enqueued one.

A :class:`Signature` is a call not yet enqueued (``add.s(1, 2)``). ``chain``
runs its steps one after another, each receiving the previous step's result
as its **first positional argument** (before the arguments of its own
signature); ``group`` runs its members side by side, and its result is the
list of their results in group order; ``chord(group, callback)`` runs the
callback once, after every member of the group ended, with the list of
their results as its first positional argument. A chain may hold groups
and chords (a step after a group receives the list of the group's results).

``on_failure`` is the policy of the edges leaving a member (set it on a
signature with ``.set(on_failure=...)``, or for every member of a workflow
with ``chain(..., on_failure=...)``): ``"cancel"`` (the default) cancels what
depends on a member that failed, was cancelled or expired; ``"continue"``
runs the dependents anyway, with ``None`` in place of that member's result.

:meth:`omniq.AsyncOmniQ.enqueue_workflow_async` writes every task of a
workflow in one transaction and returns a :class:`WorkflowHandle`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs

from omniq.errors import ValidationError, WorkflowNotFound
from omniq.models import Task, TaskStatus
from omniq.models.limits import Limit, Rate, resolve_key
from omniq.models.workflow import Workflow, WorkflowStatus
from omniq.refs import callable_ref

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "Signature",
    "WorkflowHandle",
    "chain",
    "chord",
    "group",
    "plan_workflow",
]

OnFailure = Literal["cancel", "continue"]
_POLICIES = ("cancel", "continue")
#: Enqueue options a signature may carry (dependencies and uniqueness belong to the workflow).
SIGNATURE_OPTIONS = frozenset(
    {
        "queue_name",
        "priority",
        "run_at",
        "run_in",
        "ttl",
        "result_ttl",
        "max_retries",
        "retry_delay",
        "timeout",
        "name",
        "description",
        "tags",
        "store_result",
        "serializer",
        "on_failure",
        "concurrency",
        "rate",
        "concurrency_key",
        "rate_key",
    }
)


def _policy(value: str | None) -> OnFailure | None:
    if value is not None and value not in _POLICIES:
        raise ValidationError("on_failure", f"expected 'cancel' or 'continue', got {value!r}")
    return value  # type: ignore[return-value]


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes | Mapping):
        raise ValidationError(
            "args", f"expected a sequence of arguments, got {type(value).__name__}"
        )
    return tuple(value)


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError("kwargs", f"expected a mapping, got {type(value).__name__}")
    return dict(value)


@attrs.frozen
class Signature:
    """A call to enqueue later as a member of a workflow: ``add.s(1, 2)``.

    ``func`` is a function or a ``"module:qualname"`` reference; ``options``
    are enqueue options (``queue_name``, ``priority``, ``max_retries``,
    ``timeout``, ... and ``on_failure``).
    """

    func: str = attrs.field(converter=callable_ref)
    args: tuple[Any, ...] = attrs.field(default=(), converter=_as_tuple)
    kwargs: dict[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    options: dict[str, Any] = attrs.field(factory=dict, converter=_as_dict)
    #: The function itself, when known: a limit's key taken from an argument is
    #: found through its signature (``func`` is its reference).
    call: Callable[..., Any] | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.options) - SIGNATURE_OPTIONS)
        if unknown:
            raise ValidationError(
                "options",
                f"a workflow member cannot take {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(SIGNATURE_OPTIONS))})",
            )
        _policy(self.options.get("on_failure"))

    def set(self, **options: Any) -> Signature:
        """A copy with these enqueue options (over its own): ``add.s(1).set(priority=5)``."""
        return attrs.evolve(self, options={**self.options, **options})


@attrs.frozen
class Chain:
    """Steps run in order; each receives the previous one's result first."""

    steps: tuple[Node, ...]
    on_failure: OnFailure | None = attrs.field(default=None, converter=_policy)


@attrs.frozen
class Group:
    """Members run side by side; the result is the list of theirs, in order."""

    members: tuple[Node, ...]
    on_failure: OnFailure | None = attrs.field(default=None, converter=_policy)


@attrs.frozen
class Chord:
    """A group, then ``callback`` once with the list of the group's results."""

    header: Group
    callback: Node
    on_failure: OnFailure | None = attrs.field(default=None, converter=_policy)


Node: TypeAlias = Signature | Chain | Group | Chord


def _nodes(items: Sequence[Any], what: str) -> tuple[Node, ...]:
    if not items:
        raise ValidationError(what, "needs at least one signature")
    for item in items:
        if not isinstance(item, Signature | Chain | Group | Chord):
            raise ValidationError(
                what,
                f"expected signatures (task.s(...)), chains, groups or chords, "
                f"got {type(item).__name__}",
            )
    return tuple(items)


def chain(*steps: Node, on_failure: OnFailure | None = None) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: ``c(b(a(1)))``, each step a task."""
    return Chain(_nodes(steps, "chain"), on_failure)


def group(*members: Node, on_failure: OnFailure | None = None) -> Group:
    """``group(a.s(1), a.s(2))``: the tasks side by side; the result is ``[a(1), a(2)]``."""
    return Group(_nodes(members, "group"), on_failure)


def chord(
    header: Group | Sequence[Node], callback: Node, *, on_failure: OnFailure | None = None
) -> Chord:
    """``chord(group(a.s(1), a.s(2)), total.s())``: ``total([a(1), a(2)])`` once both ended."""
    if not isinstance(header, Group):
        header = group(*header)
    (body,) = _nodes([callback], "chord")
    return Chord(header, body, on_failure)


@attrs.frozen
class Plan:
    """A compiled workflow: its tasks and the rows of its tables, ready to write."""

    tasks: list[Task]
    workflow: dict[str, Any]
    members: list[dict[str, Any]]


BuildTask = Callable[..., Task]


def _keys_before_input(sig: Signature, options: dict[str, Any]) -> None:
    """Resolve the limit keys of a step that receives the previous result first (its
    call is ``func(<result>, *args)``) into ``options`` as per-call keys."""
    for field, spec_type in (("concurrency", Limit), ("rate", Rate)):
        spec = options.get(field)
        if not isinstance(spec, spec_type) or options.get(f"{field}_key") is not None:
            continue  # no limit, a per-call key, or a bad value build_task names
        options[f"{field}_key"] = resolve_key(
            spec,
            field,
            default=sig.func,
            func=sig.call,
            args=sig.args,
            kwargs=sig.kwargs,
            before_input=True,
        )


def plan_workflow(root: Node, build_task: BuildTask, workflow_id: str, created_at: Any) -> Plan:
    """Compile ``root`` into tasks and member rows (nothing is written)."""
    if not isinstance(root, Signature | Chain | Group | Chord):
        raise ValidationError(
            "workflow", f"expected a chain, group or chord, got {type(root).__name__}"
        )
    members: list[dict[str, Any]] = []
    tasks: list[Task] = []

    def add(sig: Signature, inputs: list[str], mode: str, policy: str | None) -> str:
        options = dict(sig.options)
        own = options.pop("on_failure", None)
        if inputs:
            _keys_before_input(sig, options)
        func = sig.call if sig.call is not None else sig.func
        task = build_task(func, list(sig.args), sig.kwargs, **options)
        status = TaskStatus.WAITING if inputs else TaskStatus.PENDING
        task = attrs.evolve(task, workflow_id=workflow_id, status=status)
        tasks.append(task)
        members.append(
            {
                "task_id": task.id,
                "workflow_id": workflow_id,
                "position": len(members),
                "inputs": list(inputs),
                "input_mode": mode if inputs else "none",
                "downstream": [],
                "on_failure": own or policy or "cancel",
                "remaining": len(inputs),
                "status": None,
                "result": None,
                "serializer": task.serializer,
                "error": None,
            }
        )
        return task.id

    def visit(
        node: Node, inputs: list[str], mode: str, policy: str | None
    ) -> tuple[list[str], str]:
        """Add ``node`` fed by ``inputs``; return its exits and their shape."""
        if isinstance(node, Signature):
            return [add(node, inputs, mode, policy)], "one"
        policy = node.on_failure or policy
        if isinstance(node, Chain):
            exits, shape = inputs, mode
            for step in node.steps:
                exits, shape = visit(step, exits, shape, policy)
            return exits, shape
        if isinstance(node, Group):
            out: list[str] = []
            for member in node.members:
                out.extend(visit(member, inputs, mode, policy)[0])
            return out, "list"
        exits, _ = visit(node.header, inputs, mode, policy)
        return visit(node.callback, exits, "list", policy)

    outputs, shape = visit(root, [], "none", None)
    by_id = {x["task_id"]: x for x in members}
    for member in members:
        for up in member["inputs"]:
            by_id[up]["downstream"].append(member["task_id"])
    kind = {Signature: "chain", Chain: "chain", Group: "group", Chord: "chord"}[type(root)]
    workflow = {
        "id": workflow_id,
        "kind": kind,
        "outputs": outputs,
        "output_shape": shape,
        "created_at": created_at,
    }
    return Plan(tasks, workflow, members)


class WorkflowHandle:
    """An enqueued workflow: its ``id``, ``status`` and ``result``.

    ``result()`` waits until the members that make the result ended and
    returns it: a chain's last step's result, a group's list of results (in
    group order), a chord's callback's result. A member that did not complete
    raises :class:`WorkflowFailed`, except one whose ``on_failure`` is
    ``"continue"``: it gives ``None``.
    """

    def __init__(self, app: AsyncOmniQ, workflow_id: str) -> None:
        self.app = app
        self.id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    async def get_async(self) -> Workflow:
        """The workflow as stored now (see :meth:`AsyncOmniQ.get_workflow_async`)."""
        workflow = await self.app.get_workflow_async(self.id)
        if workflow is None:
            raise WorkflowNotFound(f"no workflow with id {self.id!r}")
        return workflow

    async def status_async(self) -> WorkflowStatus:
        """The workflow's status now."""
        return (await self.get_async()).status

    async def result_async(self, timeout: timedelta | float | None = None) -> Any:
        """Wait (at most ``timeout``) for the workflow's result; raise TimeoutError after."""
        svc = await self.app._svc()
        return await svc.workflows.result_async(self.id, timeout)

    def status(self) -> WorkflowStatus:
        """Blocking twin of :meth:`status_async`."""
        from omniq._portal import run_sync_on

        return run_sync_on(self.app.loop, self.status_async)

    def get(self) -> Workflow:
        """Blocking twin of :meth:`get_async`."""
        from omniq._portal import run_sync_on

        return run_sync_on(self.app.loop, self.get_async)

    def result(self, timeout: timedelta | float | None = None) -> Any:
        """Blocking twin of :meth:`result_async`."""
        from omniq._portal import run_sync_on

        return run_sync_on(self.app.loop, self.result_async, timeout)
