"""The sync twins, as a plain script or many threads use them, on every engine."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from omniq._time import utcnow
from omniq.errors import InvalidTransition, TaskNotFound, ValidationError
from omniq.models import EventType, ResultStatus, Schedule, TaskStatus
from omniq.sync import SyncServices

FUNC = "tests.helpers:func"
THREADS = 8
PER_THREAD = 15


def test_sync_services_roundtrip(db_url: str) -> None:
    with SyncServices.open(db_url) as svc:
        task_id = svc.queue.enqueue(FUNC, [1, 2], priority=3)
        assert svc.queue.size() == 1
        task = svc.queue.dequeue(worker_id="sync")
        assert task is not None
        assert task.id == task_id
        assert task.func_args == (1, 2)
        assert svc.queue.complete(task, {"sum": 3})
        result = svc.results.wait(task_id, timeout=5)
        assert result is not None
        assert result.result == {"sum": 3}
        assert svc.results.get(task_id) == result
        events = svc.events.get_events(task_id=task_id)
        assert [e.event_type for e in reversed(events)] == [
            EventType.ENQUEUED,
            EventType.DEQUEUED,
            EventType.COMPLETED,
        ]
        assert svc.queue.stats() == {"default": {"completed": 1}}
        assert svc.results.get_stats() == {"success": 1, "total": 1}

        # Errors cross the portal unchanged (typed).
        with pytest.raises(TaskNotFound):
            svc.queue.cancel("nope")
        with pytest.raises(InvalidTransition):
            svc.queue.requeue(task_id)
        with pytest.raises(ValidationError):
            svc.events.get_events(event_type="bogus")

        # build_task + enqueue_many, dependencies and a timeout dequeue.
        a = svc.queue.build_task(FUNC, ["a"], max_retries=0)
        b = svc.queue.build_task(FUNC, ["b"], depends_on=[a.id])
        assert svc.queue.enqueue_many([a, b]) == [a.id, b.id]
        claimed = svc.queue.dequeue_many(5, timeout=0.05)
        assert [x.id for x in claimed] == [a.id]
        assert svc.queue.fail(claimed[0], RuntimeError("x")) is TaskStatus.FAILED
        stored_b = svc.queue.get_task(b.id)
        assert stored_b is not None
        assert stored_b.status is TaskStatus.CANCELLED
        assert svc.queue.dequeue(timeout=0.05) is None
        cancelled = svc.results.get(b.id)
        assert cancelled is not None
        assert cancelled.status is ResultStatus.CANCELLED

        sid = svc.queue.schedule(
            Schedule(func=FUNC, schedule_type="interval", interval=timedelta(minutes=1))
        )
        assert [s.id for s in svc.queue.list_schedules()] == [sid]
        assert svc.queue.get_ready_schedules(now=utcnow() + timedelta(minutes=2))[0].id == sid
        assert svc.queue.delete_schedule(sid)


def test_sync_services_from_eight_threads(db_url: str) -> None:
    with SyncServices.open(db_url) as svc:
        barrier = threading.Barrier(THREADS)

        def producer(n: int) -> list[str]:
            barrier.wait(timeout=30)
            ids = []
            for i in range(PER_THREAD):
                task_id = svc.queue.enqueue(FUNC, [n, i], queue_name=f"q{n % 2}")
                got = svc.queue.get_task(task_id)
                assert got is not None
                assert got.func_args == (n, i)
                ids.append(task_id)
            assert svc.queue.size() >= len(ids)
            return ids

        with ThreadPoolExecutor(THREADS) as pool:
            batches = list(pool.map(producer, range(THREADS)))

        ids = [x for batch in batches for x in batch]
        assert len(set(ids)) == THREADS * PER_THREAD
        assert svc.queue.size() == THREADS * PER_THREAD
        half = THREADS * PER_THREAD // 2
        assert svc.queue.stats() == {"q0": {"pending": half}, "q1": {"pending": half}}
        assert svc.events.get_stats()["by_type"] == {"enqueued": THREADS * PER_THREAD}


def test_consumers_in_threads_claim_each_task_once(db_url: str) -> None:
    with SyncServices.open(db_url) as svc:
        total = 60
        svc.queue.enqueue_many([svc.queue.build_task(FUNC, [i]) for i in range(total)])
        barrier = threading.Barrier(THREADS)

        def consumer(n: int) -> list[str]:
            barrier.wait(timeout=30)
            done: list[str] = []
            while True:
                task = svc.queue.dequeue(worker_id=f"w{n}")
                if task is None:
                    return done
                assert svc.queue.complete(task, task.func_args[0], worker_id=f"w{n}")
                done.append(task.id)

        with ThreadPoolExecutor(THREADS) as pool:
            per_worker = list(pool.map(consumer, range(THREADS)))

        claimed = Counter(x for done in per_worker for x in done)
        assert len(claimed) == total
        assert set(claimed.values()) == {1}
        assert svc.queue.stats() == {"default": {"completed": total}}
        assert svc.results.get_stats() == {"success": total, "total": total}


def test_separate_sync_services_per_thread(db_url: str) -> None:
    barrier = threading.Barrier(THREADS)

    def worker(n: int) -> tuple[str, int]:
        with SyncServices.open(db_url) as svc:
            barrier.wait(timeout=30)
            key_id = svc.queue.enqueue(FUNC, [n], unique_key="one-for-all")
            for i in range(5):
                svc.queue.enqueue(FUNC, [n, i], queue_name=f"t{n}")
            return key_id, svc.queue.size(f"t{n}")

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(worker, range(THREADS)))

    assert len({key_id for key_id, _ in outcomes}) == 1
    assert [size for _, size in outcomes] == [5] * THREADS
    with SyncServices.open(db_url) as svc:
        assert svc.queue.size() == THREADS * 5 + 1
