"""What every ``omniq`` command needs: its configuration, its URL, and the app it opens.

Commands that only read open the database without creating or migrating
anything: a SQLite URL whose file does not exist is an error, not a new file.
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs

from omniq.cli_output import CLIError
from omniq.config import OmniQConfig

__all__ = ["config_of", "open_app", "require_database", "url_of"]


def config_of(args: argparse.Namespace) -> OmniQConfig:
    """``OMNIQ_*`` environment variables, overridden by the global options."""
    config = OmniQConfig.from_env()
    changes: dict[str, Any] = {}
    if args.url:
        changes["url"] = args.url
    if args.project:
        changes["project_name"] = args.project
    if args.base_dir:
        changes["base_dir"] = args.base_dir
    if getattr(args, "log_level", None):
        changes["log_level"] = args.log_level
    return attrs.evolve(config, **changes)


def url_of(config: OmniQConfig) -> str:
    """The database URL the command works on."""
    from omniq.db.engine import default_sqlite_url

    return config.url or default_sqlite_url(config.project_name, config.base_dir)


def require_database(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist (reading must not create it)."""
    from omniq.db.engine import normalize_url, sqlite_path

    path = sqlite_path(normalize_url(url))
    if path is not None and not path.is_file():
        raise CLIError(
            f"there is no OmniQ database at {path} (nothing was created): check --url, "
            "or create it with `omniq db upgrade`",
            code=1,
        )


def refuse_empty_file(url: str) -> None:
    """Refuse a SQLite URL whose file is empty (opened, SQLite would write its
    header into it; `db check` reports such a file instead)."""
    from omniq.db.engine import normalize_url, sqlite_path

    path = sqlite_path(normalize_url(url))
    if path is not None and path.stat().st_size == 0:
        raise CLIError(
            f"{path} is an empty file, not an OmniQ database (it was left as it is): "
            "check --url, or create the database with `omniq db upgrade`",
            code=1,
        )


def open_app(config: OmniQConfig, *, read_only: bool, must_exist: bool | None = None) -> Any:
    """The :class:`~omniq.AsyncOmniQ` of ``config`` (not opened yet).

    Read-only: the database must exist and is never migrated (an old schema is
    reported with the command that upgrades it). ``must_exist`` (default: as
    ``read_only``): a SQLite file that is not there is an error, not created
    (commands that act on what is stored: a mistyped path is not a new queue).
    """
    from omniq.app import AsyncOmniQ

    if read_only if must_exist is None else must_exist:
        require_database(url_of(config))
        refuse_empty_file(url_of(config))
    if read_only:
        settings = attrs.evolve(config.settings, auto_migrate=False)
        config = attrs.evolve(config, settings=settings)
    return AsyncOmniQ.from_config(config)
