"""Who may look and act: loopback by default, the access rule, read_only, CSRF, no GET writes."""

from __future__ import annotations

import re

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from omniq import AsyncOmniQ, OmniQ, TaskStatus
from omniq.web import Access, create_app
from tests.integration.web.conftest import LOCAL, dashboard, post, token

EXPLODE = "tests.app_tasks:explode"
REMOTE = ("203.0.113.9", 40000)


def _failed_task(oq: OmniQ) -> str:
    task_id = oq.enqueue(EXPLODE)
    oq.run_worker(burst=True)
    return task_id


def _status(oq: OmniQ, task_id: str) -> TaskStatus:
    task = oq.get_task(task_id)
    assert task is not None
    return task.status


def test_without_access_rule_only_loopback_is_served(oq: OmniQ) -> None:
    with dashboard(oq, client=REMOTE) as client:
        for url in ("/", "/tasks", "/workers"):
            page = client.get(url)
            assert page.status_code == 403
            assert "pass access= to omniq.web.create_app" in page.text
    with dashboard(oq, client=("::1", 1)) as client:
        assert client.get("/").status_code == 200


def test_access_rule_decides_read_and_act(oq: OmniQ) -> None:
    task_id = _failed_task(oq)
    seen: list[str] = []

    def rule(request: Request) -> Access:
        seen.append(request.headers.get("x-user", ""))
        user = request.headers.get("x-user")
        return Access(read=user in ("viewer", "admin"), act=user == "admin")

    with dashboard(oq, access=rule, client=REMOTE) as client:
        assert client.get("/", headers={"x-user": "stranger"}).status_code == 403
        viewer = client.get(f"/tasks/{task_id}", headers={"x-user": "viewer"})
        assert viewer.status_code == 200 and 'id="retry"' not in viewer.text
        admin = client.get(f"/tasks/{task_id}", headers={"x-user": "admin"})
        assert 'id="retry"' in admin.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', admin.text)
        assert csrf is not None
        refused = client.post(
            f"/tasks/{task_id}/retry",
            data={"csrf": csrf.group(1)},
            headers={"x-user": "viewer"},
            follow_redirects=False,
        )
        assert refused.status_code == 403 and "not to act" in refused.text
        assert _status(oq, task_id) is TaskStatus.FAILED
        allowed = client.post(
            f"/tasks/{task_id}/retry",
            data={"csrf": csrf.group(1)},
            headers={"x-user": "admin"},
            follow_redirects=False,
        )
        assert allowed.status_code == 303
        assert _status(oq, task_id) is TaskStatus.PENDING
    assert "stranger" in seen


def test_async_access_rule_and_pair_answer(oq: OmniQ) -> None:
    async def rule(request: Request) -> tuple[bool, bool]:
        return (request.url.path != "/workers", False)

    with dashboard(oq, access=rule, client=REMOTE) as client:
        assert client.get("/tasks").status_code == 200
        assert client.get("/workers").status_code == 403


def test_read_only_hides_and_refuses_every_action(oq: OmniQ) -> None:
    task_id = _failed_task(oq)
    schedule_id = oq.schedule("tests.app_tasks:add", [1, 1], interval=60)
    with dashboard(oq) as normal:
        valid = token(normal)
    with dashboard(oq, read_only=True) as client:
        client.cookies.set("omniq_csrf", valid)
        for url in (f"/tasks/{task_id}", "/tasks", "/dead", "/schedules"):
            html = client.get(url).text
            assert 'method="post"' not in html, url
        assert "read-only" in client.get("/").text
        for url in (f"/tasks/{task_id}/retry", f"/schedules/{schedule_id}/pause", "/bulk"):
            answer = client.post(
                url, data={"csrf": valid, "action": "retry"}, follow_redirects=False
            )
            assert answer.status_code == 403 and "read-only" in answer.text
    assert _status(oq, task_id) is TaskStatus.FAILED


def test_state_changes_need_post_with_the_csrf_token(oq: OmniQ, client: TestClient) -> None:
    task_id = _failed_task(oq)
    url = f"/tasks/{task_id}/retry"
    assert client.get(url).status_code == 405  # nothing changes on GET
    missing = client.post(url, follow_redirects=False)
    assert missing.status_code == 403 and "CSRF" in missing.text
    valid = token(client)
    wrong = client.post(url, data={"csrf": "x" * 43}, follow_redirects=False)
    assert wrong.status_code == 403
    foreign = client.post(
        url,
        data={"csrf": valid},
        headers={"origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert foreign.status_code == 403 and "another site" in foreign.text
    # A token without its cookie (another browser) is refused too.
    with dashboard(oq) as stranger:
        alone = stranger.post(url, data={"csrf": valid}, follow_redirects=False)
        assert alone.status_code == 403
    assert _status(oq, task_id) is TaskStatus.FAILED
    assert post(client, url).status_code == 303
    assert _status(oq, task_id) is TaskStatus.PENDING


def test_mounted_under_a_prefix_links_and_actions_follow_it(oq: OmniQ) -> None:
    task_id = _failed_task(oq)
    outer = Starlette(routes=[Mount("/ops/omniq", app=create_app(oq))])
    with TestClient(outer, client=LOCAL) as client:
        listing = client.get("/ops/omniq/tasks")
        assert listing.status_code == 200
        assert f'href="/ops/omniq/tasks/{task_id}"' in listing.text
        assert 'href="/ops/omniq/static/omniq.css"' in listing.text
        assert 'action="/ops/omniq/bulk"' in listing.text
        assert client.get("/ops/omniq/static/omniq.js").status_code == 200
        assert client.get("/tasks").status_code == 404  # nothing outside the mount
        csrf = token(client, "/ops/omniq/tasks")
        answer = client.post(
            f"/ops/omniq/tasks/{task_id}/retry", data={"csrf": csrf}, follow_redirects=False
        )
        assert answer.status_code == 303
        assert answer.headers["location"].startswith(f"/ops/omniq/tasks/{task_id}?")
    assert _status(oq, task_id) is TaskStatus.PENDING


def test_an_async_app_is_opened_on_first_request_and_closed_at_shutdown(db_url: str) -> None:
    app = AsyncOmniQ(url=db_url)
    with TestClient(create_app(app), client=LOCAL) as client:
        assert app.loop is None
        assert client.get("/").status_code == 200
        assert app.loop is not None
        assert client.get("/tasks").status_code == 200
    assert app.loop is None  # closed by the dashboard that opened it


def test_create_app_checks_its_arguments(oq: OmniQ) -> None:
    with pytest.raises(TypeError, match="AsyncOmniQ or OmniQ"):
        create_app("sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bulk_cap"):
        create_app(oq, bulk_cap=0)
