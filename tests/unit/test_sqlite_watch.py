"""The SQLite work watch: wake the waiters only when another connection's commit made work.

Driven with a fake change counter and a fake "is a task ready" read, so each
rule is seen on its own: an unchanged counter costs no read, a change that
made nothing ready wakes nobody, looks that find nothing back off, nobody
looks while nobody waits, a reading that cannot be had is skipped, a
failing read is reported once and the watch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from omniq.services.sqlite_watch import SQLiteWorkWatch

pytestmark = pytest.mark.anyio

DEADLINE = 10.0
LOOK_MAX = 0.2  # the longest gap between two looks that find nothing, in these tests


class Fakes:
    def __init__(self) -> None:
        self.version: object = 1
        self.waiting = True
        self.ready = False
        self.fail: Exception | None = None
        self.reads = 0
        self.readings = 0
        self.wakes = 0

    def read_version(self) -> object:
        self.readings += 1
        return self.version

    async def read_ready(self) -> bool:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return self.ready

    def wake(self) -> None:
        self.wakes += 1

    def wanted(self) -> bool:
        return self.waiting

    def reads_reach(self, n: int) -> Callable[[], bool]:
        return lambda: self.reads >= n


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def _running(
    fakes: Fakes, body: Callable[[], Awaitable[None]], activity: Callable[[], int] = lambda: 0
) -> SQLiteWorkWatch:
    watch = SQLiteWorkWatch(
        fakes.read_version,
        fakes.read_ready,
        fakes.wake,
        fakes.wanted,
        activity,
        every=(0.001, 0.004),
        look_max=LOOK_MAX,
    )
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return watch


async def test_the_first_reading_looks_once_and_an_unchanged_counter_costs_no_read() -> None:
    fakes = Fakes()
    fakes.ready = True

    async def body() -> None:
        # The first reading cannot tell what came just before it: it looks once.
        await _until(lambda: fakes.wakes == 1, "the first look")
        readings = fakes.readings
        await _until(lambda: fakes.readings >= readings + 5, "more readings")
        assert fakes.reads == 1 and fakes.wakes == 1

    await _running(fakes, body)


async def test_a_change_wakes_only_when_work_is_ready() -> None:
    fakes = Fakes()

    async def body() -> None:
        await _until(lambda: fakes.reads == 1, "the first look")
        assert fakes.wakes == 0  # nothing ready: nobody woken
        fakes.version = 2  # another process committed, nothing became ready
        await _until(lambda: fakes.reads == 2, "the look after a change")
        assert fakes.wakes == 0
        fakes.ready, fakes.version = True, 3
        await _until(lambda: fakes.wakes == 1, "the wake-up for ready work")
        assert fakes.reads == 3

    watch = await _running(fakes, body)
    assert (watch.changes, watch.wakes) == (3, 1)


async def test_a_counter_that_cannot_be_read_is_skipped() -> None:
    fakes = Fakes()
    fakes.version = None  # the writer's connection is busy

    async def body() -> None:
        await _until(lambda: fakes.readings >= 5, "readings")
        assert fakes.reads == 0
        fakes.version, fakes.ready = 7, True
        await _until(lambda: fakes.wakes == 1, "the look once it can read")

    await _running(fakes, body)


async def test_a_failing_read_is_reported_once_and_the_watch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="omniq.listen")
    fakes = Fakes()
    fakes.fail = RuntimeError("disk I/O error")

    async def body() -> None:
        await _until(lambda: fakes.reads == 1, "the first look")
        for version in (2, 3, 4):
            fakes.version = version
            await _until(fakes.reads_reach(version), f"the look at version {version}")
        assert fakes.wakes == 0
        fakes.fail, fakes.ready, fakes.version = None, True, 5
        await _until(lambda: fakes.wakes == 1, "the wake-up once reads work again")

    await _running(fakes, body)
    warnings = [r for r in caplog.records if "cannot look for new work" in r.message]
    assert len(warnings) == 1
    assert "RuntimeError: disk I/O error" in warnings[0].getMessage()


async def test_looks_that_find_nothing_back_off_however_often_the_file_changes() -> None:
    fakes = Fakes()

    async def body() -> None:
        # A neighbour commits all the time (every reading sees a new counter)
        # and nothing is ever ready for this worker.
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.0:
            fakes.version = int(fakes.version) + 1  # type: ignore[call-overload]
            await asyncio.sleep(0.001)

    watch = await _running(fakes, body)
    # It looked at 1, 2, 4, ... ms gaps up to LOOK_MAX: about 12 looks in a second,
    # and did not even read the counter between two looks once they were far apart.
    assert 3 <= watch.looks <= 20, watch.looks
    assert fakes.readings < 100, fakes.readings
    assert watch.wakes == 0


async def test_activity_in_this_process_brings_the_looks_back_to_their_shortest_gap() -> None:
    fakes = Fakes()
    generation = [0]

    async def body() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 0.6:  # looks back off to LOOK_MAX
            fakes.version = int(fakes.version) + 1  # type: ignore[call-overload]
            await asyncio.sleep(0.001)
        looks = fakes.reads
        fakes.version = int(fakes.version) + 1  # type: ignore[call-overload]
        await _until(lambda: fakes.reads > looks, "a look: the next is LOOK_MAX away")
        looks = fakes.reads
        generation[0] += 1  # this process worked (its notifier moved)
        fakes.version, fakes.ready = int(fakes.version) + 1, True  # type: ignore[call-overload]
        before = loop.time()
        await _until(lambda: fakes.reads > looks and fakes.wakes == 1, "the next look")
        assert loop.time() - before < LOOK_MAX / 2  # not the backed-off gap

    await _running(fakes, body, lambda: generation[0])


async def test_nobody_looks_while_nobody_waits_and_a_change_is_not_forgotten() -> None:
    fakes = Fakes()
    fakes.waiting = False
    fakes.ready = True

    async def body() -> None:
        await _until(lambda: fakes.readings >= 3, "readings")
        fakes.version = 2
        await _until(lambda: fakes.readings >= 10, "more readings")
        assert fakes.reads == 0 and fakes.wakes == 0
        fakes.waiting = True  # a worker waits for work: the change is looked at now
        await _until(lambda: fakes.wakes == 1, "the look once someone waits")

    await _running(fakes, body)


async def test_a_new_connection_s_counter_is_a_change_even_if_its_value_repeats() -> None:
    fakes = Fakes()
    fakes.version = (1, 2)

    async def body() -> None:
        await _until(lambda: fakes.reads == 1, "the first look")
        fakes.version = (2, 2)  # the writer reconnected: a fresh counter starts at 2 again
        await _until(lambda: fakes.reads == 2, "a look at the new connection's counter")

    await _running(fakes, body)
