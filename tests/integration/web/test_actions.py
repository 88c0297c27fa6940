"""Actions through the dashboard: each goes through the services and writes its event."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from omniq import OmniQ, TaskStatus
from omniq.models import EventType, ScheduleStatus
from tests.integration.web.conftest import dashboard, post

ADD = "tests.app_tasks:add"
EXPLODE = "tests.app_tasks:explode"


def _status(oq: OmniQ, task_id: str) -> TaskStatus:
    task = oq.get_task(task_id)
    assert task is not None
    return task.status


def _events(oq: OmniQ, task_id: str) -> list[str]:
    return [e.event_type.value for e in oq.get_events(task_id=task_id)]


def test_retry_one_failed_task(oq: OmniQ, client: TestClient) -> None:
    task_id = oq.enqueue(EXPLODE)
    oq.run_worker(burst=True)
    detail = client.get(f"/tasks/{task_id}").text
    assert 'id="retry"' in detail and 'id="cancel"' not in detail
    answer = post(client, f"/tasks/{task_id}/retry")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"/tasks/{task_id}?notice=")
    assert _status(oq, task_id) is TaskStatus.PENDING
    assert _events(oq, task_id)[0] == EventType.REQUEUED.value
    shown = client.get(answer.headers["location"]).text
    assert "Task sent back to the queue." in shown
    assert 'id="task-status" class="status pending"' in shown
    # Retrying a task that is not dead is a conflict, said plainly.
    again = post(client, f"/tasks/{task_id}/retry")
    assert again.status_code == 409 and "only failed, cancelled or expired" in again.text


def test_cancel_one_pending_task(oq: OmniQ, client: TestClient) -> None:
    task_id = oq.enqueue(ADD, [1, 1], run_in=3600)
    answer = post(client, f"/tasks/{task_id}/cancel")
    assert answer.status_code == 303
    assert _status(oq, task_id) is TaskStatus.CANCELLED
    assert _events(oq, task_id)[0] == EventType.CANCELLED.value
    finished = post(client, f"/tasks/{task_id}/cancel")
    assert finished.status_code == 303
    assert "already+finished" in finished.headers["location"]
    assert post(client, "/tasks/no-such-task/cancel").status_code == 404


def test_retry_all_matching_confirms_the_count_and_respects_the_cap(oq: OmniQ) -> None:
    failed = [oq.enqueue(EXPLODE, queue_name="q") for _ in range(5)]
    other = oq.enqueue(EXPLODE, queue_name="other")
    oq.run_worker(burst=True)
    with dashboard(oq, bulk_cap=3) as client:
        form = {"action": "retry", "view": "dead", "queue": "q"}
        confirm = post(client, "/bulk", form)
        assert confirm.status_code == 200
        count = re.search(r'id="confirm-count">(.*?)</p>', confirm.text, re.S)
        assert count is not None
        assert "<strong>3 (the cap)</strong>" in count.group(1)
        assert "at most 3" in count.group(1)
        assert all(_status(oq, t) is TaskStatus.FAILED for t in failed)  # nothing yet
        done = post(client, "/bulk", {**form, "confirmed": "yes"})
        assert done.status_code == 303
        assert done.headers["location"].startswith("/dead?")
        assert "3+task%28s%29+retried" in done.headers["location"]
    statuses = [_status(oq, t) for t in failed]
    assert statuses.count(TaskStatus.PENDING) == 3
    assert statuses.count(TaskStatus.FAILED) == 2
    # Oldest first; each one went through requeue and wrote its event.
    assert statuses[:3] == [TaskStatus.PENDING] * 3
    assert all(_events(oq, t)[0] == EventType.REQUEUED.value for t in failed[:3])
    assert _status(oq, other) is TaskStatus.FAILED


def test_cancel_all_matching_a_filter(oq: OmniQ, client: TestClient) -> None:
    tagged = [oq.enqueue(ADD, [1, 1], run_in=3600, tags=["batch"]) for _ in range(4)]
    untagged = oq.enqueue(ADD, [1, 1], run_in=3600)
    form = {"action": "cancel", "view": "tasks", "tag": "batch"}
    confirm = post(client, "/bulk", form)
    assert "<strong>4</strong>" in confirm.text
    done = post(client, "/bulk", {**form, "confirmed": "yes"})
    assert done.status_code == 303 and "4+task%28s%29+cancelled" in done.headers["location"]
    assert all(_status(oq, t) is TaskStatus.CANCELLED for t in tagged)
    assert _status(oq, untagged) is TaskStatus.PENDING
    # Nothing left to cancel: the confirmation says so and offers no button.
    empty = post(client, "/bulk", form)
    assert "No task matching this filter can be cancelled" in empty.text
    assert 'name="confirmed"' not in empty.text


def test_bulk_with_a_bad_filter_or_action_is_a_400(client: TestClient) -> None:
    assert post(client, "/bulk", {"action": "explode"}).status_code == 400
    bad = post(client, "/bulk", {"action": "retry", "status": "nope"})
    assert bad.status_code == 400 and "unknown status" in bad.text


def test_pause_resume_cancel_a_schedule(oq: OmniQ, client: TestClient) -> None:
    schedule_id = oq.schedule(ADD, [1, 1], interval=60, name="s")

    def status() -> ScheduleStatus:
        found = oq.get_schedule(schedule_id)
        assert found is not None
        return found.status

    page = client.get(f"/schedules/{schedule_id}").text
    assert 'value="pause"' in page and 'value="resume"' not in page
    assert post(client, f"/schedules/{schedule_id}/pause").status_code == 303
    assert status() is ScheduleStatus.PAUSED
    assert 'value="resume"' in client.get("/schedules").text
    assert post(client, f"/schedules/{schedule_id}/resume").status_code == 303
    assert status() is ScheduleStatus.ACTIVE
    assert post(client, f"/schedules/{schedule_id}/cancel").status_code == 303
    assert status() is ScheduleStatus.CANCELLED
    kinds = {e.event_type.value for e in oq.get_events(schedule_id=schedule_id)}
    assert {"schedule_paused", "schedule_resumed", "schedule_cancelled"} <= kinds
    assert post(client, f"/schedules/{schedule_id}/explode").status_code == 400
    assert post(client, "/schedules/no-such/pause").status_code == 404
