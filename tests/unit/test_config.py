"""Configuration from dict, environment and file round-trips; bad values are typed errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from omniq.config import OmniQConfig, parse_duration
from omniq.errors import ConfigurationError, ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30), ("30s", 30), ("5m", 300), ("1.5h", 5400), ("2d", 172800), ("250ms", 0.25), (7, 7)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["none", "None", "off", ""])
def test_parse_duration_none(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["soon", "-5", "5 parsecs", True])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(text, "result_ttl")


def test_dict_round_trip() -> None:
    config = OmniQConfig.from_dict(
        {
            "project_name": "shop",
            "url": "sqlite:///x.db",
            "queues": "high, default ,low",
            "max_retries": 3,
            "retry_delay": "2s",
            "result_ttl": "6h",
            "task_ttl": "none",
            "event_retention": "30d",
            "lease_duration": "45s",
            "concurrency": "8",
            "executor": "thread",
            "poll_interval": "500ms",
        }
    )
    assert config.queues == ("high", "default", "low")
    assert config.settings.default_max_retries == 3
    assert config.settings.default_retry_delay == timedelta(seconds=2)
    assert config.settings.default_result_ttl == timedelta(hours=6)
    assert config.settings.default_task_ttl is None
    assert config.settings.event_retention == timedelta(days=30)
    assert config.settings.lease_duration == timedelta(seconds=45)
    assert config.concurrency == 8 and config.executor == "thread"
    assert config.poll_interval == 0.5
    assert OmniQConfig.from_dict(config.to_dict()) == config


def test_env_round_trip() -> None:
    env = {
        "OMNIQ_DATABASE_URL": "postgresql+asyncpg://u@h/db",
        "OMNIQ_QUEUES": "a,b",
        "OMNIQ_DEFAULT_TIMEOUT": "90",
        "OMNIQ_MAX_RETRIES": "4",
        "OMNIQ_RESULT_TTL": "1h",
        "OMNIQ_EVENT_RETENTION": "none",
        "OMNIQ_HEARTBEAT_INTERVAL": "5s",
        "OMNIQ_ALLOW_PICKLE": "1",
        "OMNIQ_CONCURRENCY": "3",
        "OMNIQ_LOG_LEVEL": "debug",
        "UNRELATED": "x",
    }
    config = OmniQConfig.from_env(env)
    assert config.url == "postgresql+asyncpg://u@h/db"
    assert config.queues == ("a", "b")
    assert config.settings.default_timeout == timedelta(seconds=90)
    assert config.settings.default_max_retries == 4
    assert config.settings.event_retention is None
    assert config.settings.heartbeat_interval == timedelta(seconds=5)
    assert config.settings.allow_pickle is True
    assert config.concurrency == 3 and config.log_level == "debug"
    assert OmniQConfig.from_dict(config.to_dict()) == config


def test_file_round_trip(tmp_path: Path) -> None:
    toml = tmp_path / "omniq.toml"
    toml.write_text(
        '[omniq]\nproject_name = "files"\nqueues = ["x", "y"]\nmax_retries = 2\n'
        'result_ttl = "2h"\n\n[omniq.settings]\nevent_retention = "1d"\n',
        encoding="utf-8",
    )
    from_toml = OmniQConfig.from_file(toml)
    assert from_toml.project_name == "files" and from_toml.queues == ("x", "y")
    assert from_toml.settings.default_max_retries == 2
    assert from_toml.settings.event_retention == timedelta(days=1)
    as_json = tmp_path / "omniq.json"
    as_json.write_text(json.dumps(from_toml.to_dict()), encoding="utf-8")
    assert OmniQConfig.from_file(as_json) == from_toml


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"bogus": 1}, "unknown configuration key 'bogus'"),
        ({"executor": "gpu"}, "executor"),
        ({"max_retries": "many"}, "default_max_retries"),
        ({"lease_duration": "none"}, "lease_duration"),
        ({"concurrency": "x"}, "concurrency"),
        ({"poll_interval": "0"}, "poll_interval"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises((ConfigurationError, ValidationError), match=needle):
        OmniQConfig.from_dict(data)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        OmniQConfig.from_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("project_name = ", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"broken\.toml"):
        OmniQConfig.from_file(broken)
    yaml = tmp_path / "omniq.yaml"
    yaml.write_text("a: 1", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"\.toml or \.json"):
        OmniQConfig.from_file(yaml)


@pytest.mark.parametrize("port", [99999, 0])
def test_a_database_url_with_a_port_out_of_range_is_a_configuration_error(port: int) -> None:
    """It was an OverflowError from the driver at connect time (exit 1: "could not be
    done") where a mistyped URL is bad input (exit 2)."""
    from omniq import OmniQ

    with pytest.raises(ConfigurationError, match="a port is 1-65535"):
        OmniQ(url=f"postgresql://postgres:secret@127.0.0.1:{port}/test").open()
