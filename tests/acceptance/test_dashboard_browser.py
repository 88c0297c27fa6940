"""The dashboard in a real browser: headless Chromium from the distribution's packages,
driven by Selenium through the system chromedriver, against `omniq dashboard` started
as a user starts it.

A user finds a failed task, reads its traceback, presses Retry, confirms, and sees it
pending again; the overview's chart renders and its live part refreshes by itself.
Skipped (with the reason) when no browser is installed, unless
``OMNIQ_REQUIRE_BROWSER`` is set (CI sets it). With ``OMNIQ_SCREENSHOTS=<dir>`` the
screenshots of the README are written there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq import OmniQ, Settings, TaskStatus
from tests.acceptance.dashboard_server import DEADLINE, dashboard_process

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> tuple[str, str]:
    """(browser, driver) paths; else skip (fail with OMNIQ_REQUIRE_BROWSER) naming what lacks."""
    missing = []
    for module in ("selenium", "starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module} (pip install -e '.[dev,web]')")
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        missing.append("a Chromium browser (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("OMNIQ_REQUIRE_BROWSER"):
            pytest.fail(reason + " (OMNIQ_REQUIRE_BROWSER is set)")
        pytest.skip(reason)
    assert browser is not None and driver is not None
    return browser, driver


def _wait(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE:g}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def driver() -> Iterator[Any]:
    browser, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`omniq dashboard` on a free port over a new database: (base URL, database URL)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'dash.db'}"
    with dashboard_process(tmp_path, url) as server:
        yield server.base, url


def _shoot(chrome: Any, name: str) -> None:
    folder = os.environ.get("OMNIQ_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(Path(folder) / name))


def test_find_read_and_retry_a_failed_task_in_a_browser(
    driver: Any, served: tuple[str, str]
) -> None:
    from selenium.webdriver.common.by import By

    base, url = served
    settings = Settings(default_max_retries=0)
    with OmniQ(url=url, settings=settings, allow_modules=["tests.app_tasks"]) as oq:
        for i in range(6):
            oq.enqueue("tests.app_tasks:add", [i, i], queue_name="reports")
        failed = oq.enqueue("tests.app_tasks:explode", queue_name="emails", name="send-welcome")
        oq.run_worker(burst=True)
        oq.schedule("tests.app_tasks:add", [1, 1], cron="0 3 * * *", name="nightly-report")
        assert (oq.get_task(failed) or pytest.fail("task vanished")).status is TaskStatus.FAILED

        # The overview: counts, and the chart drawn with bars of real size.
        driver.get(base + "/")
        chart = driver.find_element(By.ID, "throughput-chart")
        assert chart.size["width"] > 300 and chart.size["height"] > 50
        bars = driver.find_elements(By.CSS_SELECTOR, "#throughput-chart rect.bar-completed")
        assert len(bars) == 60
        assert any(float(b.get_attribute("height")) > 0 for b in bars)
        assert "6 completed, 1 failed" in driver.find_element(By.ID, "live").text
        _shoot(driver, "dashboard-overview.png")
        # Live refresh: new work shows up on the open page without a reload.
        oq.enqueue("tests.app_tasks:add", [1, 1], queue_name="fresh-queue")
        _wait(lambda: "fresh-queue" in driver.find_element(By.ID, "live").text, "a refresh")

        # The task list filtered to failures shows the failed task; open it.
        driver.get(base + "/tasks?status=failed")
        rows = driver.find_elements(By.CSS_SELECTOR, "#task-list tbody tr")
        assert len(rows) == 1 and "failed" in rows[0].text and "kaboom" in rows[0].text
        rows[0].find_element(By.LINK_TEXT, "send-welcome").click()
        _wait(lambda: driver.find_elements(By.ID, "task-status"), "the task page")
        assert driver.find_element(By.ID, "task-status").text == "failed"
        traceback = driver.find_element(By.ID, "result-traceback").text
        assert "RuntimeError: kaboom" in traceback and "raise RuntimeError" in traceback
        _shoot(driver, "dashboard-failed-task.png")

        # Retry asks for confirmation; dismissing it changes nothing.
        driver.find_element(By.ID, "retry").click()
        alert = _wait(lambda: _alert(driver), "the confirmation")
        assert "Retry task" in alert.text
        alert.dismiss()
        assert (oq.get_task(failed) or pytest.fail("task vanished")).status is TaskStatus.FAILED
        driver.find_element(By.ID, "retry").click()
        _wait(lambda: _alert(driver), "the confirmation").accept()
        _wait(
            lambda: (
                driver.find_elements(By.ID, "task-status")
                and driver.find_element(By.ID, "task-status").text == "pending"
            ),
            "the task to show pending",
        )
        assert "Task sent back to the queue." in driver.page_source
        assert (oq.get_task(failed) or pytest.fail("task vanished")).status is TaskStatus.PENDING


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None
