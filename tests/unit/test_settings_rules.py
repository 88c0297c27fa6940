"""Settings checked at the door: each rule raises a ConfigurationError naming its fields."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from omniq import AsyncOmniQ, OmniQ, Settings
from omniq.backends.sqlite import SQLiteBackend
from omniq.config import OmniQConfig
from omniq.errors import ConfigurationError, OmniQError, SerializationError, ValidationError
from omniq.models.rules import RETENTION_FIELDS
from omniq.models.settings import evolve_settings
from omniq.storage.sqlite_queue import SQLiteTaskQueue

S = timedelta(seconds=1)


def test_heartbeat_must_be_at_most_a_third_of_the_lease() -> None:
    # The case: a 10 s heartbeat with a 3 s lease would fail a healthy 8 s task.
    with pytest.raises(ConfigurationError) as caught:
        Settings(lease_duration=3 * S, heartbeat_interval=10 * S)
    error = caught.value
    assert error.fields == ("heartbeat_interval", "lease_duration")
    assert error.rule == "heartbeat_interval <= lease_duration / 3"
    assert "heartbeat_interval (10s)" in str(error) and "lease_duration (3s)" in str(error)
    assert "at most 1s" in str(error)
    with pytest.raises(ConfigurationError):
        Settings(lease_duration=30 * S, heartbeat_interval=10.001 * S)
    assert Settings(lease_duration=30 * S, heartbeat_interval=10 * S).heartbeat_interval == 10 * S


def test_the_default_heartbeat_is_a_quarter_of_the_lease() -> None:
    assert Settings().heartbeat_interval == 15 * S  # the default 60 s lease
    assert Settings(lease_duration=3 * S).heartbeat_interval == timedelta(seconds=0.75)
    # Changing only the lease of existing settings: a default heartbeat follows it...
    assert evolve_settings(Settings(), lease_duration=2 * S).heartbeat_interval == 0.5 * S
    # ... a chosen one does not (and the rule still holds).
    chosen = Settings(heartbeat_interval=5 * S)
    assert evolve_settings(chosen, lease_duration=30 * S).heartbeat_interval == 5 * S
    with pytest.raises(ConfigurationError) as caught:
        evolve_settings(chosen, lease_duration=12 * S)
    assert caught.value.fields == ("heartbeat_interval", "lease_duration")


@pytest.mark.parametrize("field", RETENTION_FIELDS)
def test_retention_is_positive_or_none(field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{field: timedelta(0)})
    assert caught.value.fields == (field,)
    assert field in str(caught.value) and "none to keep forever" in str(caught.value)
    assert getattr(Settings(**{field: None}), field) is None
    assert getattr(Settings(**{field: S}), field) == S


def test_rules_hold_for_the_environment_and_config_files(tmp_path: Path) -> None:
    env = {"OMNIQ_LEASE_DURATION": "3s", "OMNIQ_HEARTBEAT_INTERVAL": "10s"}
    with pytest.raises(ConfigurationError) as caught:
        OmniQConfig.from_env(env)
    assert caught.value.fields == ("heartbeat_interval", "lease_duration")
    # A lease alone: the heartbeat follows it.
    alone = OmniQConfig.from_env({"OMNIQ_LEASE_DURATION": "4s"})
    assert alone.settings.heartbeat_interval == S
    with pytest.raises(ConfigurationError) as caught:
        OmniQConfig.from_env({"OMNIQ_RESULT_TTL": "0"})
    assert caught.value.fields == ("default_result_ttl",)
    with pytest.raises(ConfigurationError) as caught:
        OmniQConfig.from_env({"OMNIQ_CONCURRENCY": "0"})
    assert caught.value.fields == ("concurrency",)

    toml = tmp_path / "omniq.toml"
    toml.write_text('[omniq]\nlease_duration = "5s"\nheartbeat_interval = "2s"\n', "utf-8")
    with pytest.raises(ConfigurationError) as caught:
        OmniQConfig.from_file(toml)
    assert caught.value.fields == ("heartbeat_interval", "lease_duration")
    as_json = tmp_path / "omniq.json"
    as_json.write_text('{"worker": {"max_workers": 0}}', "utf-8")
    with pytest.raises(ConfigurationError) as caught:
        OmniQConfig.from_file(as_json)
    assert caught.value.fields == ("concurrency",)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        # Past 64 bits every claim was refused and a burst worker never ended.
        ({"concurrency": 10**20}, "concurrency"),
        ({"concurrency": 1_000_001}, "concurrency"),
        ({"prefetch": 10**20}, "prefetch"),
        ({"prefetch": -1}, "prefetch"),
        ({"prefetch": 1.5}, "prefetch"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": timedelta(days=2)}, "poll_interval"),
        ({"maintenance_interval": 0.0}, "maintenance_interval"),
        ({"maintenance_interval": -1}, "maintenance_interval"),
        ({"scheduler_interval": float("nan")}, "scheduler_interval"),
        ({"grace_period": -1}, "grace_period"),
        ({"worker_id": 5}, "worker_id"),  # was accepted: every loop then failed
        ({"worker_id": "w" * 201}, "worker_id"),
        ({"metrics": 5}, "metrics"),  # was a raw AttributeError
    ],
)
def test_worker_options_are_checked_when_the_app_is_built(
    options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncOmniQ("rules", worker=options)
    assert caught.value.fields == (field,)
    assert field in str(caught.value)
    assert isinstance(caught.value, OmniQError | ValueError)


@pytest.mark.parametrize(
    ("queues", "says"),
    [
        ("emails", "got the string 'emails'"),  # not the queues e, m, a, i, l, s
        (5, "got int"),
        ([""], "1-200 characters"),
        (["ok", 5], "got 5"),
        (["x" * 201], "1-200 characters"),
    ],
)
def test_a_queues_option_is_a_list_of_queue_names(queues: Any, says: str, tmp_path: Path) -> None:
    built: list[Any] = [
        lambda: AsyncOmniQ("rules", queues=queues),
        lambda: SQLiteTaskQueue(SQLiteBackend("rules", base_dir=str(tmp_path)), queues),
    ]
    for build in built:
        with pytest.raises(ConfigurationError, match=re.escape(says)) as caught:
            build()
        assert caught.value.fields == ("queues",)
    with pytest.raises(SerializationError, match="queues"):
        AsyncOmniQ("rules", queues=["bad\ud800"])
    # Any iterable of names serves; none (or empty) serves every queue.
    assert AsyncOmniQ("rules", queues=("a", "b")).queues == ["a", "b"]
    assert AsyncOmniQ("rules", queues=[]).queues is None


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("lease_duration", -1, "expected a timedelta"),  # was a raw TypeError
        ("busy_timeout", float("nan"), "expected a timedelta"),
        ("server_timeout", 5, "expected a timedelta"),
        ("retry_backoff", 0, "at least 1"),  # was attrs' raw ValueError
        ("retry_backoff", float("nan"), "at least 1"),
        ("retry_backoff", "2", "expected a number"),
        ("retry_jitter", 5, "between 0 and 1"),
        ("sqlite_synchronous", "OFF", "one of"),
        ("sqlite_max_page_count", 0, "positive integer"),
        ("serializer", "bogus", "one of"),  # was accepted, and failed at enqueue
        ("signing_key", "", "must not be empty"),  # was signing silently off
        ("signing_key", 5, "expected a string"),
        ("allow_pickle", "yes", "True or False"),
        ("default_queue", "", "1-200 characters"),
    ],
)
def test_a_bad_setting_is_a_validation_error_naming_it(field: str, value: Any, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        Settings(**{field: value})
    assert caught.value.field == field
    with pytest.raises(SerializationError, match="signing_key"):
        Settings(signing_key="key\ud800")


def test_allow_modules_as_a_string_and_an_uncreatable_database_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="got the string 'os'") as caught:
        AsyncOmniQ("rules", allow_modules="os")  # type: ignore[arg-type]
    assert caught.value.fields == ("allow_modules",)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    app = OmniQ("rules", url=f"sqlite+aiosqlite:///{blocker}/sub/x.db")
    with pytest.raises(ConfigurationError, match="cannot create the SQLite database"):
        app.open()  # was a raw FileNotFoundError / NotADirectoryError


def test_valid_worker_options_pass() -> None:
    AsyncOmniQ(
        "rules",
        concurrency=1,
        poll_interval=0.01,
        worker={"prefetch": 0, "maintenance_interval": 0.5, "grace_period": 0},
    )
    AsyncOmniQ("rules", worker={"prefetch": None})
