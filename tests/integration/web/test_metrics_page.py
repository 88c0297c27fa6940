"""``/metrics`` on the dashboard: the database gauges for Prometheus, behind the access rule."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client", reason='metrics tests need "omniq[metrics]"')

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from omniq import OmniQ
from omniq.web import Access
from tests.integration.web.conftest import dashboard

REMOTE = ("203.0.113.9", 40000)


def _tasks(text: str) -> dict[tuple[str, str], int]:
    return {
        (s.labels["queue"], s.labels["status"]): int(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "omniq_tasks" and s.value
    }


def test_metrics_page_serves_the_database_gauges(oq: OmniQ, client: TestClient) -> None:
    for _ in range(2):
        oq.enqueue("tests.app_tasks:add", [1, 2], queue_name="mail")
    oq.enqueue("tests.app_tasks:explode", queue_name="reports")
    oq.run_worker(queues=["reports"])
    page = client.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    stats = oq.stats()["tasks"]
    expected = {(q, s): n for q, per in stats.items() for s, n in per.items() if n}
    assert _tasks(page.text) == expected == {("mail", "pending"): 2, ("reports", "failed"): 1}
    assert 'omniq_workers{state="alive"} 0.0' in page.text
    assert "omniq_database_up 1.0" in page.text


def test_metrics_page_follows_the_access_rule(oq: OmniQ) -> None:
    with dashboard(oq, client=REMOTE) as client:
        assert client.get("/metrics").status_code == 403
    with dashboard(oq, client=REMOTE, access=lambda r: Access(read=True, act=False)) as client:
        assert client.get("/metrics").status_code == 200
