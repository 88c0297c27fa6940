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
    assert '<input type="hidden" name="queue" value="quiet">' in live
    assert 'action="/queues/resume"' in live and 'action="/queues/pause"' in live


def test_pause_and_resume_from_the_overview(oq: OmniQ, client: TestClient) -> None:
    task_id = oq.enqueue(ADD, [1, 2], queue_name="emails")
    answer = post(client, "/queues/pause", {"queue": "emails"})
    assert answer.status_code == 303
    assert "Queue+emails+paused" in answer.headers["location"]
    assert oq.list_paused_queues() == ["emails"]
    oq.run_worker(burst=True)
    task = oq.get_task(task_id)
    assert task is not None and task.status.value == "pending"
    assert post(client, "/queues/resume", {"queue": "emails"}).status_code == 303
    assert oq.list_paused_queues() == []
    assert post(client, "/queues/stop", {"queue": "emails"}).status_code == 400
    assert post(client, "/queues/pause").status_code == 400  # no queue named


def test_read_only_dashboards_show_no_queue_action(oq: OmniQ) -> None:
    oq.pause_queue("emails")
    with dashboard(oq, read_only=True) as client:
        live = client.get("/live").text
        assert "paused" in live and "/queues/resume" not in live


def test_any_queue_name_is_shown_and_paused_from_the_overview(
    oq: OmniQ, client: TestClient
) -> None:
    """A "/" in a queue name made the overview answer 500 (its Pause link could not
    be built), and "?" or "#" cut the link short (404): the name is a form field."""
    names = ["reports/daily", "a?b", "c#d", "..", "%2F"]
    for name in names:
        oq.enqueue(ADD, [1, 2], queue_name=name)
    for page in ("/", "/live"):
        answer = client.get(page)
        assert answer.status_code == 200, page
    for name in names:
        assert post(client, "/queues/pause", {"queue": name}).status_code == 303
    assert sorted(oq.list_paused_queues()) == sorted(names)


def test_a_page_number_that_is_not_ascii_digits_is_a_400(client: TestClient) -> None:
    """ "²" passes str.isdigit() but not int(): the schedules page answered 500."""
    assert client.get("/schedules?page=%C2%B2").status_code == 400
