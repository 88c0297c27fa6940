"""Every view of the dashboard shows what the tables hold, on every engine."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from omniq import OmniQ, Settings, TaskStatus
from omniq.web import pages
from tests import app_tasks
from tests.integration.web.conftest import dashboard
from tests.waiting import wait_until_sync

ADD = "tests.app_tasks:add"
EXPLODE = "tests.app_tasks:explode"


def _ids(html: str) -> list[str]:
    return re.findall(r'href="/tasks/([0-9a-zA-Z-]+)"', html)


def test_overview_counts_backlog_chart_workers_and_due_schedules(
    oq: OmniQ, client: TestClient
) -> None:
    for _ in range(3):
        oq.enqueue(ADD, [1, 2], queue_name="emails")
    oq.enqueue(EXPLODE, queue_name="emails")
    oq.run_worker(queues=["emails"], burst=True)
    oq.enqueue(ADD, [1, 2], queue_name="reports")
    oq.schedule(ADD, [1, 1], interval=3600, name="hourly-report")

    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    row = re.search(r"<tr>\s*<td><a [^>]*>emails</a></td>(.*?)</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">(?:<a [^>]*>)?(\d+)', row.group(1))
    counts = dict(zip([s.value for s in TaskStatus], map(int, cells), strict=True))
    assert counts == {
        "pending": 0, "waiting": 0, "running": 0, "completed": 3,
        "failed": 1, "cancelled": 0, "expired": 0,
    }  # fmt: skip
    reports = re.search(r"<td><a [^>]*>reports</a></td>.*?</tr>", html, re.S)
    assert reports is not None and re.search(r"<td>\d+s</td>", reports.group(0))
    # The chart: 60 minutes, this minute's bars show 3 completed and 1 failed.
    assert html.count('class="minute"') == 60
    assert "3 completed, 1 failed" in html
    heights = [float(h) for h in re.findall(r'class="bar-failed"[^>]*height="([\d.]+)"', html)]
    assert sum(1 for h in heights if h > 0) == 1
    assert "hourly-report" in html
    assert "0 alive" in html
    # The live part alone, for the page's refresh.
    live = client.get("/live")
    assert live.status_code == 200
    assert "<html" not in live.text and 'id="throughput-chart"' in live.text


def test_workers_page_and_overview_show_a_running_worker(oq: OmniQ, client: TestClient) -> None:
    worker = oq.start_worker(queues=["a", "b"], concurrency=2)
    try:
        wait_until_sync(lambda: bool(oq.list_workers()), "the worker to register")
        page = client.get("/workers")
        assert page.status_code == 200
        row = re.search(rf"<code>{re.escape(worker.worker_id)}</code>.*?</tr>", page.text, re.S)
        assert row is not None
        assert "alive" in row.group(0) and "a, b" in row.group(0)
        assert "1 alive" in client.get("/").text
    finally:
        oq.stop_worker()
    assert "No worker is registered" in client.get("/workers").text


def test_task_list_filters(oq: OmniQ, client: TestClient) -> None:
    mail = oq.enqueue(ADD, [1, 1], queue_name="mail", tags=["vip", "é"], name="welcome mail")
    report = oq.enqueue(app_tasks.record, ["x"], queue_name="reports", name="weekly_report")
    boom = oq.enqueue(EXPLODE, queue_name="mail", tags=["vipx"])
    oq.run_worker(queues=["mail"], burst=True)

    def listed(query: str) -> set[str]:
        page = client.get(f"/tasks?{query}")
        assert page.status_code == 200, page.text
        return set(_ids(page.text))

    assert listed("") == {mail, report, boom}
    assert listed("queue=mail") == {mail, boom}
    assert listed("status=failed") == {boom}
    assert listed("status=failed&status=pending") == {boom, report}
    assert listed("func=APP_TASKS:rec") == {report}
    assert listed("tag=vip") == {mail}
    assert listed("tag=%C3%A9") == {mail}
    assert listed("name=WEEKLY_") == {report}
    assert listed("name=%25") == set()  # LIKE wildcards match themselves only
    created = oq.get_task(report)
    assert created is not None
    after = (created.created_at + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert listed(f"to={after}") == {mail, report, boom}
    assert listed(f"from={after}") == set()
    assert listed("from=2000-01-01T00:00&to=2000-01-02T00:00") == set()


@pytest.mark.parametrize("sort", ["newest", "oldest", "priority"])
def test_task_list_pages_by_keyset_in_order(
    oq: OmniQ, client: TestClient, sort: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE_SIZE", 4)
    start = datetime.now(UTC)
    tasks = [
        oq.build_task(ADD, [i, i], priority=i % 3, run_at=start + timedelta(seconds=i % 5))
        for i in range(11)
    ]
    oq.enqueue_many(tasks)
    seen: list[str] = []
    url: str | None = f"/tasks?sort={sort}"
    while url is not None:
        page = client.get(url)
        assert page.status_code == 200
        ids = _ids(page.text)
        assert 0 < len(ids) <= 4
        seen += ids
        found = re.search(r'id="next-page" href="([^"]+)"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    by_id = {t.id: t for t in tasks}
    expected = {
        "newest": sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True),
        "oldest": sorted(tasks, key=lambda t: (t.created_at, t.id)),
        "priority": sorted(tasks, key=lambda t: (-t.priority, t.run_at, t.id)),
    }[sort]
    assert seen == [t.id for t in expected]
    assert set(seen) == set(by_id)


def test_dead_letters_lists_only_failed_cancelled_expired(oq: OmniQ, client: TestClient) -> None:
    failed = oq.enqueue(EXPLODE)
    oq.run_worker(burst=True)
    cancelled = oq.enqueue(ADD, [1, 1], run_in=3600)
    oq.cancel(cancelled)
    pending = oq.enqueue(ADD, [2, 2], run_in=3600)
    page = client.get("/dead")
    assert page.status_code == 200
    assert set(_ids(page.text)) == {failed, cancelled}
    assert set(_ids(client.get("/dead?status=cancelled").text)) == {cancelled}
    refused = client.get("/dead?status=pending")
    assert refused.status_code == 400
    assert "not listed here" in refused.text
    assert pending in client.get("/tasks?status=pending").text


def test_task_detail_shows_each_failed_attempt_result_timeline_and_relations(
    oq: OmniQ, client: TestClient
) -> None:
    bad = oq.enqueue(EXPLODE, max_retries=1, retry_delay=0, tags=["t1"], priority=7)
    child = oq.enqueue(ADD, [1, 2], depends_on=[bad])
    oq.run_worker(burst=True)
    page = client.get(f"/tasks/{bad}")
    assert page.status_code == 200
    html = page.text
    assert 'id="task-status" class="status failed"' in html
    attempts = re.findall(r'<div class="failure" id="attempt-(\d)">(.*?)</details>', html, re.S)
    assert [n for n, _ in attempts] == ["1", "2"]  # the retried attempt, then the final one
    for (_, attempt), kind in zip(attempts, ("retried", "final"), strict=True):
        assert f"· {kind} ·" in attempt
        assert '<span class="error-type">RuntimeError</span>' in attempt
        assert '<span class="error-cell">kaboom</span>' in attempt
        # Each attempt shows its own traceback.
        tb = re.search(r'<pre class="traceback">(.*?)</pre>', attempt, re.S)
        assert tb is not None and "raise RuntimeError" in tb.group(1)
    traceback = re.search(r'<pre class="traceback" id="result-traceback">(.*?)</pre>', html, re.S)
    assert traceback is not None and "raise RuntimeError" in traceback.group(1)
    timeline = re.search(r'<table id="timeline">.*?</table>', html, re.S)
    assert timeline is not None
    kinds = re.findall(r"</td><td>([a-z_]+)</td>", timeline.group(0))
    assert kinds[0] == "enqueued" and kinds.count("retry") == 1 and kinds[-1] == "failed"
    assert f'href="/tasks/{child}"' in html  # its dependent, cancelled with it
    assert "<dd>7</dd>" in html
    assert "Hidden: arguments are shown only" in html
    child_page = client.get(f"/tasks/{child}").text
    assert f'href="/tasks/{bad}"' in child_page


def test_task_detail_result_and_arguments_with_log_arguments(db_url: str) -> None:
    settings = Settings(log_arguments=True)
    with OmniQ(url=db_url, settings=settings, allow_modules=["tests.app_tasks"]) as app:
        task_id = app.enqueue(ADD, [20, 22])
        app.run_worker(burst=True)
        with dashboard(app) as client:
            html = client.get(f"/tasks/{task_id}").text
    assert re.search(r'<pre id="result">42</pre>', html)
    assert re.search(r'<pre id="arguments">args: \[\s*20,\s*22\s*\]', html)


def test_task_made_by_a_schedule_links_to_it(oq: OmniQ, client: TestClient) -> None:
    schedule_id = oq.schedule(
        ADD, [1, 1], interval=3600, start_at=datetime.now(UTC), name="nightly"
    )
    oq.run_worker(burst=True)  # fires the due schedule and runs its task
    (made,) = oq.list_tasks(status="completed")
    assert made.schedule_id == schedule_id
    html = client.get(f"/tasks/{made.id}").text
    assert f'href="/schedules/{schedule_id}">nightly</a>' in html


def test_task_of_a_workflow_shows_its_workflow_id(oq: OmniQ, client: TestClient) -> None:
    from omniq import chain

    handle = oq.enqueue_workflow(chain(oq.signature(ADD, 1, 1), oq.signature(ADD, 2)))
    (first, _second) = handle.get().task_ids
    html = client.get(f"/tasks/{first}").text
    assert f'<code id="workflow">{handle.id}</code>' in html


def test_schedules_pages(oq: OmniQ, client: TestClient) -> None:
    cron = oq.schedule(ADD, [1, 1], cron="*/5 * * * *", timezone="Europe/Paris", name="c")
    every = oq.schedule(ADD, [1, 1], interval=90, name="i", max_runs=3)
    oq.pause_schedule(every)
    listing = client.get("/schedules")
    assert listing.status_code == 200
    html = listing.text
    assert "*/5 * * * *" in html and "Europe/Paris" in html and "every 90s" in html
    assert "0 / 3" in html
    assert set(re.findall(r'href="/schedules/([^"/]+)"', html)) == {cron, every}
    paused = client.get("/schedules?status=paused").text
    assert set(re.findall(r'href="/schedules/([^"/]+)"', paused)) == {every}
    detail = client.get(f"/schedules/{cron}")
    assert detail.status_code == 200 and 'id="schedule-status" class="status active"' in detail.text


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("/tasks?status=bogus", 400, "unknown status"),
        ("/tasks?sort=sideways", 400, "unknown order"),
        ("/tasks?from=yesterday", 400, "not a date and time"),
        ("/tasks?from=2030-01-02T00:00&to=2030-01-01T00:00", 400, "must be after"),
        ("/tasks?cursor=not-a-cursor", 400, "cursor"),
        ("/tasks?cursor=WyJwcmlvcml0eSIsMSwyLCJ4Il0", 400, "another sort order"),
        ("/tasks?name=" + "x" * 300, 400, "at most 200"),
        ("/tasks/no-such-task", 404, "no task with id"),
        ("/schedules/no-such-schedule", 404, "no schedule with id"),
        ("/schedules?status=sleepy", 400, "unknown schedule status"),
        ("/schedules?page=0", 400, "page"),
        ("/no/such/page", 404, "no such page"),
    ],
)
def test_bad_input_gets_a_clear_error_page(
    client: TestClient, url: str, status: int, says: str
) -> None:
    page = client.get(url)
    assert page.status_code == status
    assert says in page.text
    assert "Traceback" not in page.text


def test_text_from_tasks_is_escaped(oq: OmniQ, client: TestClient) -> None:
    task_id = oq.enqueue(
        EXPLODE, name="<script>alert(1)</script>", tags=["<b>t</b>"], description="<i>d</i>"
    )
    oq.run_worker(burst=True)
    for url in (f"/tasks/{task_id}", "/tasks", "/dead"):
        html = client.get(url).text
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    detail = client.get(f"/tasks/{task_id}").text
    assert "<b>t</b>" not in detail and "&lt;b&gt;t&lt;/b&gt;" in detail
    assert "<i>d</i>" not in detail
