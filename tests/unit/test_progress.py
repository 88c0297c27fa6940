"""Progress without a database: the checks, current_task(), and the child's throttled pipe."""

from __future__ import annotations

import contextvars
import math
import multiprocessing
import time

import pytest

import omniq
from omniq._time import utcnow
from omniq.errors import NoCurrentTask, ValidationError
from omniq.models.progress import MAX_PROGRESS_MESSAGE, TaskProgress, check_progress
from omniq.task_context import CurrentTask, _current
from omniq.worker.pipe_progress import PipeProgress


@pytest.mark.parametrize(
    ("done", "total", "message", "field"),
    [
        (-0.5, None, None, "done"),
        (1, 0, None, "total"),
        (1, -3, None, "total"),
        (11, 10, None, "done"),
        ("3", None, None, "done"),
        (True, None, None, "done"),
        (math.nan, None, None, "done"),
        (1, math.inf, None, "total"),
        (1, 2, 5, "message"),
        (1, 2, "x" * (MAX_PROGRESS_MESSAGE + 1), "message"),
        (1, 2, "nul\x00", "message"),
    ],
)
def test_bad_progress_is_refused_naming_the_field(
    done: object, total: object, message: object, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        check_progress(done, total, message)
    assert info.value.field == field


def test_good_progress_is_kept_as_floats() -> None:
    assert check_progress(0) == (0.0, None, None)
    assert check_progress(3, 3, "all") == (3.0, 3.0, "all")
    assert check_progress(2.5, None, "x" * MAX_PROGRESS_MESSAGE)[0] == 2.5


def test_task_progress_fraction_and_percent() -> None:
    assert omniq.TaskProgress is TaskProgress  # re-exported
    half = TaskProgress(task_id="t", attempt=1, done=5, total=10, updated_at=utcnow())
    assert (half.fraction, half.percent) == (0.5, 50.0)
    open_ended = TaskProgress(task_id="t", attempt=1, done=5, updated_at=utcnow())
    assert (open_ended.fraction, open_ended.percent) == (None, None)


def test_current_task_raises_outside_a_task_and_answers_inside() -> None:
    with pytest.raises(NoCurrentTask, match="outside a task"):
        omniq.current_task()
    reports: list[tuple[float, float | None, str | None]] = []
    task = CurrentTask(
        id="t1", attempt=2, queue="q", function="m:f", sink=lambda *r: reports.append(r)
    )

    def inside() -> None:
        _current.set(task)
        current = omniq.current_task()
        assert (current.id, current.attempt, current.queue, current.function) == (
            "t1",
            2,
            "q",
            "m:f",
        )
        current.progress(1, 4, "a quarter")
        with pytest.raises(ValidationError):
            current.progress(5, 4)

    contextvars.copy_context().run(inside)
    assert reports == [(1.0, 4.0, "a quarter")]  # the bad report never reached the sink
    with pytest.raises(NoCurrentTask):
        omniq.current_task()


def test_the_child_pipe_sends_a_few_reports_and_always_the_last() -> None:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    pipe = PipeProgress(sender, interval=0.05)
    started = time.monotonic()
    for done in range(10_001):
        pipe.report(float(done), 10_000.0, None)
    elapsed = time.monotonic() - started
    pipe.close()
    pipe.report(1.0, 2.0, "after close: dropped")
    messages = []
    while receiver.poll():
        messages.append(receiver.recv())
    assert messages[0] == ("progress", 0.0, 10_000.0, None)
    assert messages[-1] == ("progress", 10_000.0, 10_000.0, None)
    assert 2 <= len(messages) <= elapsed / 0.05 + 3
    dones = [m[1] for m in messages]
    assert dones == sorted(dones)


def test_a_pending_child_report_is_sent_by_the_timer() -> None:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    pipe = PipeProgress(sender, interval=0.05)
    pipe.report(1.0, None, "first")  # sent at once
    pipe.report(2.0, None, "second")  # within the interval: sent by the timer
    assert receiver.poll(30)
    assert receiver.recv() == ("progress", 1.0, None, "first")
    assert receiver.poll(30)  # without close(): the timer sends it
    assert receiver.recv() == ("progress", 2.0, None, "second")
    pipe.close()
    assert not receiver.poll()
