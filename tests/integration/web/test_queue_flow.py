"""The overview shows paused queues and queue limits, and pauses/resumes a queue (issue 16)."""

from __future__ import annotations

from datetime import timedelta

from starlette.testclient import TestClient

from omniq import OmniQ, Rate
from tests.integration.web.conftest import dashboard, post

ADD = "tests.app_tasks:add"


def test_overview_shows_a_paused_queue_and_its_limits(oq: OmniQ, client: TestClient) -> None:
    oq.enqueue(ADD, [1, 2], queue_name="emails")
    oq.set_queue_limit("emails", concurrency=5, rate=Rate(50, per=timedelta(seconds=1)))
    oq.pause_queue("quiet")  # a paused queue without tasks is listed too
    live = client.get("/live").text
    assert "5 running, 50 per 0:00:01" in live
    assert 'class="badge paused">paused</span>' in live
    assert "/queues/quiet/resume" in live and "/queues/emails/pause" in live


def test_pause_and_resume_from_the_overview(oq: OmniQ, client: TestClient) -> None:
    task_id = oq.enqueue(ADD, [1, 2], queue_name="emails")
    answer = post(client, "/queues/emails/pause")
    assert answer.status_code == 303
    assert "Queue+emails+paused" in answer.headers["location"]
    assert oq.list_paused_queues() == ["emails"]
    oq.run_worker(burst=True)
    task = oq.get_task(task_id)
    assert task is not None and task.status.value == "pending"
    assert post(client, "/queues/emails/resume").status_code == 303
    assert oq.list_paused_queues() == []
    assert post(client, "/queues/emails/stop").status_code == 400


def test_read_only_dashboards_show_no_queue_action(oq: OmniQ) -> None:
    oq.pause_queue("emails")
    with dashboard(oq, read_only=True) as client:
        live = client.get("/live").text
        assert "paused" in live and "/queues/emails/resume" not in live
