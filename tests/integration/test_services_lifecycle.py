"""Stateful property test of the task lifecycle, driven through the sync twins.

A Hypothesis state machine enqueues, claims, completes, fails (with and
without retries), cancels, expires and requeues tasks against a real
database, keeping a model of every task's status and event trail. After
every step it checks:

- each task's stored status is the model's: a task in a final state
  (completed/failed/cancelled/expired) never leaves it except via requeue;
- each task's events are exactly the transitions the model performed, one
  event per transition, in order;
- at most one live (pending/waiting/running) task holds a unique key.

Each example works in a queue and a unique-key namespace of its own, so the
examples share one database without seeing each other.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import ClassVar

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from omniq._time import utcnow
from omniq.errors import DuplicateTask, InvalidTransition
from omniq.models import EventType, Task, TaskStatus
from omniq.services import ErrorInfo
from omniq.sync import SyncServices

FUNC = "tests.helpers:func"
LIVE = frozenset({TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.RUNNING})
DEAD = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
KEYS = st.sampled_from([None, None, "k0", "k1"])


@attrs.define
class Model:
    """What the machine believes about one task."""

    status: TaskStatus
    events: list[EventType]
    unique_key: str | None
    max_retries: int
    retry_count: int = 0
    lease: Task | None = None
    #: A cancel was requested while the task ran (it holds through a failed attempt).
    cancel_requested: bool = False


class Lifecycle(RuleBasedStateMachine):
    """The task lifecycle against one database, through SyncServices."""

    #: Set by the test on a subclass: the services of the database under test.
    services: ClassVar[SyncServices]

    def __init__(self) -> None:
        super().__init__()
        self.svc = self.services
        self.queue = f"q-{uuid.uuid4().hex[:12]}"
        self.key_prefix = uuid.uuid4().hex[:12]
        self.tasks: dict[str, Model] = {}

    # --- helpers ---------------------------------------------------------------------

    def key(self, name: str | None) -> str | None:
        return None if name is None else f"{self.key_prefix}-{name}"

    def live_holder(self, key: str | None, other_than: str | None = None) -> str | None:
        if key is None:
            return None
        holders = [
            task_id
            for task_id, m in self.tasks.items()
            if m.unique_key == key and m.status in LIVE and task_id != other_than
        ]
        assert len(holders) <= 1
        return holders[0] if holders else None

    def with_status(self, *statuses: TaskStatus) -> list[str]:
        return sorted(i for i, m in self.tasks.items() if m.status in statuses)

    def running(self) -> list[str]:
        return self.with_status(TaskStatus.RUNNING)

    def add(self, task_id: str, key: str | None, retries: int, status: TaskStatus) -> Model:
        assert task_id not in self.tasks
        model = Model(
            status=status, events=[EventType.ENQUEUED], unique_key=key, max_retries=retries
        )
        self.tasks[task_id] = model
        return model

    # --- rules ------------------------------------------------------------------------

    @rule(key=KEYS, retries=st.integers(0, 2))
    def enqueue(self, key: str | None, retries: int) -> None:
        unique_key = self.key(key)
        holder = self.live_holder(unique_key)
        task_id = self.svc.queue.enqueue(
            FUNC,
            [retries],
            queue_name=self.queue,
            unique_key=unique_key,
            max_retries=retries,
            retry_delay=0,
        )
        if holder is not None:
            assert task_id == holder, "a live task holds the key: its id comes back"
        else:
            self.add(task_id, unique_key, retries, TaskStatus.PENDING)

    @rule()
    def claim(self) -> None:
        pending = self.with_status(TaskStatus.PENDING)
        task = self.svc.queue.dequeue(queues=[self.queue], worker_id="machine")
        if not pending:
            assert task is None
            return
        assert task is not None, f"pending tasks {pending} but nothing claimed"
        assert task.id in pending
        assert task.status is TaskStatus.RUNNING
        model = self.tasks[task.id]
        model.status = TaskStatus.RUNNING
        model.events.append(EventType.DEQUEUED)
        model.lease = task

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(self.running()), label="complete")
        model = self.tasks[task_id]
        assert model.lease is not None
        done = self.svc.queue.complete(model.lease, {"done": task_id})
        if model.cancel_requested:
            # Cancelled while it ran: the completion honours it (the result is dropped).
            assert not done
            model.status = TaskStatus.CANCELLED
            model.events.append(EventType.CANCELLED)
        else:
            assert done
            model.status = TaskStatus.COMPLETED
            model.events.append(EventType.COMPLETED)
        model.lease = None

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), retry=st.booleans())
    def fail(self, data: st.DataObject, retry: bool) -> None:
        task_id = data.draw(st.sampled_from(self.running()), label="fail")
        model = self.tasks[task_id]
        assert model.lease is not None
        status = self.svc.queue.fail(model.lease, ErrorInfo(type="E", message="x"), retry=retry)
        if retry and model.retry_count < model.max_retries and model.cancel_requested:
            assert status is TaskStatus.CANCELLED
            model.status = TaskStatus.CANCELLED
            model.events.append(EventType.CANCELLED)
        elif retry and model.retry_count < model.max_retries:
            assert status is TaskStatus.PENDING
            model.status = TaskStatus.PENDING
            model.retry_count += 1
            model.events.append(EventType.RETRY)
        else:
            assert status is TaskStatus.FAILED
            model.status = TaskStatus.FAILED
            model.events.append(EventType.FAILED)
        model.lease = None

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.tasks)), label="cancel")
        model = self.tasks[task_id]
        done = self.svc.queue.cancel(task_id)
        if model.status in (TaskStatus.PENDING, TaskStatus.WAITING):
            assert done
            model.status = TaskStatus.CANCELLED
            model.events.append(EventType.CANCELLED)
        elif model.status is TaskStatus.RUNNING:
            assert done
            model.events.append(EventType.CANCEL_REQUESTED)
            model.cancel_requested = True
        else:
            assert not done

    @rule(key=KEYS)
    def expire(self, key: str | None) -> None:
        unique_key = self.key(key)
        holder = self.live_holder(unique_key)
        built = self.svc.queue.build_task(
            FUNC,
            queue_name=self.queue,
            ttl=timedelta(minutes=1),
            unique_key=unique_key,
            max_retries=0,
        )
        past = utcnow() - timedelta(hours=1)
        task = attrs.evolve(built, created_at=past, run_at=past, expires_at=past)
        (task_id,) = self.svc.queue.enqueue_many([task])
        self.svc.queue.expire_due()
        if holder is not None:
            assert task_id == holder
            return
        assert task_id == task.id
        model = self.add(task_id, unique_key, 0, TaskStatus.EXPIRED)
        model.events.append(EventType.EXPIRED)

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.tasks)), label="requeue")
        model = self.tasks[task_id]
        if model.status not in DEAD:
            with pytest.raises(InvalidTransition):
                self.svc.queue.requeue(task_id)
            return
        if self.live_holder(model.unique_key, other_than=task_id) is not None:
            # Requeueing would make two live tasks hold one key: refused, nothing changes.
            with pytest.raises(DuplicateTask):
                self.svc.queue.requeue(task_id)
            return
        task = self.svc.queue.requeue(task_id)
        assert task.status is TaskStatus.PENDING
        assert task.attempts == 0
        assert task.retry_count == 0
        model.status = TaskStatus.PENDING
        model.retry_count = 0
        model.cancel_requested = False
        model.events.append(EventType.REQUEUED)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        stored = self.svc.queue.list_tasks(queue_name=self.queue, limit=100_000)
        assert {x.id: x.status for x in stored} == {i: m.status for i, m in self.tasks.items()}
        live_keys = Counter(x.unique_key for x in stored if x.unique_key and x.status in LIVE)
        assert all(n == 1 for n in live_keys.values()), live_keys
        for x in stored:
            model = self.tasks[x.id]
            assert x.retry_count == model.retry_count
            if x.status is TaskStatus.RUNNING:
                assert model.lease is not None
                assert x.lease_token == model.lease.lease_token
            else:
                assert x.lease_token is None
            if x.status.is_final:
                assert x.completed_at is not None

    @invariant()
    def one_event_per_transition(self) -> None:
        events = self.svc.events.get_events(queue_name=self.queue, limit=100_000)
        trail: dict[str | None, list[EventType]] = defaultdict(list)
        for event in reversed(events):  # oldest first
            trail[event.task_id].append(event.event_type)
        assert dict(trail) == {i: m.events for i, m in self.tasks.items() if m.events}


@pytest.fixture
def sync_svc(db_url: str) -> Iterator[SyncServices]:
    with SyncServices.open(db_url) as svc:
        yield svc


def test_task_lifecycle(sync_svc: SyncServices) -> None:
    class LifecycleOnThisDatabase(Lifecycle):
        services = sync_svc

    run_state_machine_as_test(
        LifecycleOnThisDatabase,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
