"""`omniq queue pause|resume` and what `omniq stats` says about paused and limited
queues (issue 16), on each engine."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from omniq import AsyncOmniQ, Rate
from tests.acceptance.test_cli_operator import run


@pytest.mark.anyio
async def test_pause_resume_and_stats(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        await oq.enqueue_async("tests.helpers:func", [1], queue_name="emails")
        await oq.set_queue_limit_async("emails", concurrency=5, rate=Rate(50, per=timedelta(1)))

    paused = run("--url", db_url, "queue", "pause", "emails")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "queue emails: paused"
    again = run("--url", db_url, "--json", "queue", "pause", "emails")
    assert json.loads(again.stdout) == {"queue": "emails", "paused": True, "changed": False}

    text = run("--url", db_url, "stats")
    assert text.returncode == 0, text.stderr
    assert "paused queues: emails" in text.stdout
    assert "queue emails limits: 5 running, 50 per 86400s" in text.stdout
    data = json.loads(run("--url", db_url, "stats", "--json").stdout)
    assert data["paused_queues"] == ["emails"]
    assert data["queue_limits"]["emails"] == {
        "paused": True,
        "concurrency": 5,
        "rate": {"limit": 50, "per": 86400.0},
    }

    resumed = run("--url", db_url, "queue", "resume", "emails")
    assert resumed.stdout.strip() == "queue emails: resumed"
    assert "paused queues: none" in run("--url", db_url, "stats").stdout
    async with AsyncOmniQ(url=db_url) as oq:
        assert await oq.list_paused_queues_async() == []
        assert len(await oq.services.queue.dequeue_many_async(5)) == 1


def test_bad_queue_commands_are_refused() -> None:
    unknown = run("queue", "stop", "emails")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
