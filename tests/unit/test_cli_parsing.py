"""The ``omniq`` command line parsed without a database, and the fast schema-head read."""

from __future__ import annotations

import pytest

from omniq.cli import parse_args
from omniq.db import migrate


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "sqlite:///a.db", "--project", "p", "--base-dir", "d", "--json", "tasks"],
        ["tasks", "--url", "sqlite:///a.db", "--project", "p", "--base-dir", "d", "--json"],
        ["--url", "sqlite:///a.db", "--json", "tasks", "--project", "p", "--base-dir", "d"],
    ],
)
def test_global_options_are_read_in_either_position(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.url, args.project, args.base_dir, args.json, args.debug) == (
        "sqlite:///a.db",
        "p",
        "d",
        True,
        False,
    )


def test_global_options_default_when_absent() -> None:
    args = parse_args(["stats"])
    assert (args.url, args.project, args.base_dir, args.json, args.debug) == (
        None,
        None,
        None,
        False,
        False,
    )


def test_a_negative_value_reaches_the_options_own_check() -> None:
    assert parse_args(["enqueue", "m:f", "--in", "-5s"]).run_in == "-5s"
    assert parse_args(["enqueue", "m:f", "--priority", "-3"]).priority == -3


def test_the_shipped_head_read_without_alembic_is_alembics_head() -> None:
    assert migrate._shipped_head() == migrate._alembic_head() == migrate.head()
