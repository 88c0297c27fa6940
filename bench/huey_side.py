"""The Huey side of the comparisons: enqueue rate and a one-worker consumer process.

Huey runs on ``SqliteStorage`` in WAL mode. By default Huey leaves SQLite's
``synchronous=FULL`` (an fsync per enqueue); OmniQ runs ``synchronous=NORMAL``.
To compare queues rather than fsyncs, the comparison uses
:class:`NormalSqliteStorage`, Huey's storage with ``synchronous=NORMAL``
(``durability="default"`` gives stock Huey, reported as a note).

``python -m bench.huey_side DB N`` is the consumer process: it reports
``ready``, waits for ``go``, starts ``Consumer(workers=1, worker_type="thread")``
and reports when N tasks have completed (Huey's ``complete`` signal).
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

import huey
from huey.signals import SIGNAL_COMPLETE
from huey.storage import SqliteStorage

from bench import tasks
from bench.common import emit, rate, wait_for_go

Durability = Literal["normal", "default"]


class NormalSyncConnection(sqlite3.Connection):
    """A ``sqlite3`` connection that starts with ``synchronous=NORMAL`` (OmniQ's setting).

    Huey passes its storage's extra keyword arguments to ``sqlite3.connect``,
    so ``factory=NormalSyncConnection`` sets the pragma through public APIs
    (Huey's own ``fsync`` option offers only FULL or OFF).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("pragma synchronous=NORMAL")


class NormalSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite storage with ``synchronous=NORMAL``; notes its first dequeue."""

    first_dequeue: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, factory=NormalSyncConnection, **kwargs)

    def dequeue(self) -> Any:
        started = time.time()
        data = super().dequeue()
        if data is not None and self.first_dequeue is None:
            self.first_dequeue = started
        return data


class Bench:
    """A Huey instance on a SQLite file with the benchmark's tasks registered."""

    def __init__(self, path: Path, durability: Durability = "normal") -> None:
        storage: dict[str, Any] = {}
        if durability == "normal":
            storage["storage_class"] = NormalSqliteStorage
        self.huey = huey.SqliteHuey(filename=str(path), **storage)
        # Explicit names: producer and consumer processes agree on them.
        self.noop = self.huey.task(name="bench_noop")(tasks.noop)
        self.record = self.huey.task(name="bench_record")(tasks.record)

    def close(self) -> None:
        """Close Huey's connection."""
        self.huey.storage.close()


def enqueue_rate(path: Path, n: int, durability: Durability = "normal") -> float:
    """Tasks/s enqueued by calling a ``@huey.task`` no-op ``n`` times on a fresh file."""
    bench = Bench(path, durability)
    try:
        noop = bench.noop
        started = time.perf_counter()
        for i in range(n):
            noop(i)
        elapsed = time.perf_counter() - started
        assert bench.huey.pending_count() == n
    finally:
        bench.close()
    return rate(n, elapsed)


def fill(path: Path, n: int) -> None:
    """Enqueue ``n`` no-op tasks (the consumer benchmark's backlog)."""
    bench = Bench(path)
    try:
        for i in range(n):
            bench.noop(i)
    finally:
        bench.close()


def consume(path: Path, n: int) -> None:
    """Consumer process: one thread worker drains ``n`` tasks; report the timing."""
    bench = Bench(path)
    done = threading.Event()
    lock = threading.Lock()
    count = 0
    finished: list[float] = []

    def _completed(signal: str, task: Any, *args: Any) -> None:
        nonlocal count
        with lock:
            count += 1
            if count == n:
                finished.append(time.time())
                done.set()

    bench.huey.signal(SIGNAL_COMPLETE)(_completed)

    consumer = bench.huey.create_consumer(workers=1, worker_type="thread")
    emit({"event": "ready"})
    wait_for_go()
    consumer.start()
    ok = done.wait(timeout=600)
    consumer.stop(graceful=True)
    storage = bench.huey.storage
    assert isinstance(storage, NormalSqliteStorage)
    emit(
        {
            "event": "done",
            "ok": ok,
            "completed": count,
            "first_claim": storage.first_dequeue,
            "last_complete": finished[0] if finished else None,
        }
    )


def main() -> None:
    """Entry point of the consumer process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db", type=Path)
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    consume(args.db, args.n)


if __name__ == "__main__":
    main()
