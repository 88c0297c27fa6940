"""One line and an exit code for every failure of the ``omniq`` command.

Exit codes (the README's CLI section lists them too):

- ``1``: the command could not be done: the database cannot be reached
  (connection refused, unknown host, authentication failed, no such
  database, driver not installed), its schema is behind, a migration failed,
  a task has no result, a finished task cannot be cancelled.
- ``2``: bad input: an unknown task or schedule id, a bad option value, bad
  JSON, a malformed ``--app`` module name, an unknown revision.
- ``3``: ``omniq result --wait --timeout`` ran out of time.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from typing import Any

from omniq.cli_output import CLIError

__all__ = ["EXIT_FAILED", "EXIT_TIMEOUT", "EXIT_USAGE", "explain"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

#: PostgreSQL SQLSTATE codes of failed connections.
_AUTH_FAILED = {"28000", "28P01"}
_NO_DATABASE = "3D000"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]


def _target(args: argparse.Namespace) -> Any:
    """The URL the command worked on (None if it cannot be read)."""
    try:
        from omniq.cli_context import config_of, url_of
        from omniq.db.engine import normalize_url

        return normalize_url(url_of(config_of(args)))
    except Exception:
        return None


def _connection_problem(exc: BaseException, args: argparse.Namespace) -> str | None:
    url = _target(args)
    where = url.render_as_string(hide_password=True) if url is not None else "the database"
    if getattr(args, "command", None) == "migrate-db" and getattr(args, "target", None):
        # Two databases: which one failed is not known here; name both.
        url = None
        where = f"the source or the target database ({_both(args)})"
    host = f"{url.host or 'localhost'}:{url.port or 5432}" if url is not None else "the server"
    for err in _chain(exc):
        if isinstance(err, ModuleNotFoundError) and err.name == "asyncpg":
            return 'PostgreSQL needs the asyncpg driver: pip install "omniq[postgres]"'
        if isinstance(err, socket.gaierror):
            name = url.host if url is not None else "?"
            return f"unknown host {name!r} ({err.strerror or err}) in {where}"
        if isinstance(err, ConnectionRefusedError):
            return f"connection refused by {host}: is the database server running? ({where})"
        state = getattr(err, "sqlstate", None)
        if state in _AUTH_FAILED:
            user = url.username if url is not None else "?"
            return f"authentication failed for user {user!r} at {host}: {_first_line(err)}"
        if state == _NO_DATABASE:
            name = url.database if url is not None else "?"
            return f"database {name!r} does not exist on {host} (create it first)"
        if isinstance(err, TimeoutError | ConnectionError) and not isinstance(err, BrokenPipeError):
            return f"cannot reach {where}: {_first_line(err) or type(err).__name__}"
    return None


def _both(args: argparse.Namespace) -> str:
    from omniq.db.engine import normalize_url

    names = []
    for url in (_target(args) if not args.source else args.source, args.target):
        try:
            names.append(normalize_url(url).render_as_string(hide_password=True))
        except Exception:
            names.append(str(url))
    return " / ".join(names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """The one-line message and the exit code of ``exc``."""
    from omniq import errors

    if isinstance(exc, CLIError):
        return str(exc), exc.code
    if isinstance(exc, errors.TaskNotFound | errors.ScheduleNotFound | errors.WorkflowNotFound):
        return _first_line(exc), EXIT_USAGE
    if isinstance(exc, errors.ValidationError | errors.ConfigurationError):
        return _first_line(exc), EXIT_USAGE
    if isinstance(exc, errors.SerializationError):
        return _first_line(exc), EXIT_USAGE
    if isinstance(exc, errors.MigrationRefused):  # names the database of the two it concerns
        return f"{type(exc).__name__}: {_first_line(exc)}", EXIT_FAILED
    problem = _connection_problem(exc, args)
    if problem is not None:
        return problem, EXIT_FAILED
    if type(exc).__module__.startswith("alembic"):
        return f"migration failed: {_first_line(exc)}", EXIT_FAILED
    if isinstance(exc, errors.OmniQError):
        return f"{type(exc).__name__}: {_first_line(exc)}", EXIT_FAILED
    text = _first_line(exc)
    hint = "" if args.debug else " (run with --debug for the traceback)"
    return f"{type(exc).__name__}: {text}{hint}", EXIT_FAILED
