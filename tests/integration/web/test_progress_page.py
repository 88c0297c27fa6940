"""The dashboard's task page shows the progress a running task reported (a bar and its message)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason='the dashboard tests need the web extra: "omniq[web]"')

from omniq import OmniQ
from tests.integration.web.conftest import dashboard
from tests.waiting import wait_until_sync

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests import progress_tasks  # noqa: E402

COUNT = "tests.progress_tasks:count_to_100"


@pytest.fixture
def oq(db_url: str) -> Iterator[OmniQ]:
    with OmniQ(url=db_url, allow_modules=["tests.progress_tasks"]) as app:
        yield app


def _bar(html: str) -> tuple[str, str] | None:
    found = re.search(r'<progress id="progress-bar" value="([^"]+)" max="([^"]+)">', html)
    return None if found is None else (found.group(1), found.group(2))


def test_task_page_shows_a_progress_bar_with_the_message(oq: OmniQ, tmp_path: Path) -> None:
    task_id = oq.enqueue(COUNT, [str(tmp_path)])
    with dashboard(oq) as client:
        assert 'id="progress"' not in client.get(f"/tasks/{task_id}").text
        oq.start_worker(concurrency=1)
        try:

            def at_25() -> bool:
                progress = oq.get_progress(task_id)
                return progress is not None and progress.done == 25

            wait_until_sync(at_25, "progress 25 stored")
            html = client.get(f"/tasks/{task_id}").text
            assert 'class="status running"' in html
            assert _bar(html) == ("25.0", "100.0")
            assert '<span id="progress-percent">25%</span> (25 of 100)' in html
            assert '<span id="progress-message">step 25</span>' in html
            assert "attempt 1" in html
            for checkpoint in progress_tasks.CHECKPOINTS:
                (tmp_path / str(checkpoint)).touch()

            def completed() -> bool:
                task = oq.get_task(task_id)
                return task is not None and task.status.value == "completed"

            wait_until_sync(completed, "the task completed")
        finally:
            oq.stop_worker()
        html = client.get(f"/tasks/{task_id}").text
    assert _bar(html) == ("100.0", "100.0")
    assert '<span id="progress-percent">100%</span>' in html
    assert '<span id="progress-message">step 100</span>' in html
