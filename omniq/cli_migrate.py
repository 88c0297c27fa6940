"""``omniq migrate-db``: copy the queue into another database; ``--unflag`` undoes the flag.

The progress goes to stderr (a bar redrawn in place on a terminal, one line
per table otherwise); the summary (or ``--json``) to stdout. Exit 0 when
every count matched, 1 when one did not (the source stays flagged).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_arguments", "cmd_migrate_db"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``omniq migrate-db``."""
    p.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="the database to move (default: --url / OMNIQ_DATABASE_URL / the SQLite file)",
    )
    p.add_argument("--to", dest="target", metavar="URL", help="the database to move it to")
    p.add_argument(
        "--to-schema",
        metavar="NAME",
        help="PostgreSQL schema of OmniQ's tables in the target (--from uses OMNIQ_DB_SCHEMA)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be copied; no change")
    p.add_argument(
        "--force",
        action="store_true",
        help="give tasks still running on the source back to pending (they run again)",
    )
    p.add_argument("--events", action="store_true", help="copy the event log too")
    p.add_argument("--batch-size", type=int, default=1000, help="rows per batch (default 1000)")
    p.add_argument(
        "--timeout",
        default="60s",
        help="how long to wait for running tasks to end (default 60s)",
    )
    p.add_argument(
        "--unflag",
        action="store_true",
        help="clear the read-only flag a migration left on --from, and exit",
    )


class _Bar:
    """The copy's progress on stderr."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.open = False

    def __call__(self, progress: Any) -> None:
        from omniq.cli_progress import bar

        fraction = progress.done / progress.total if progress.total else 1.0
        line = f"{progress.table:<26} {bar(fraction)} {progress.done}/{progress.total}"
        if self.tty:
            sys.stderr.write(f"\r{line}")
            self.open = True
            if progress.done >= progress.total:
                sys.stderr.write("\n")
                self.open = False
        elif progress.done >= progress.total:
            sys.stderr.write(f"{line} ({progress.written} written)\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


async def cmd_migrate_db(args: argparse.Namespace) -> int:
    """Run ``omniq migrate-db``."""
    from omniq.cli_context import config_of, url_of
    from omniq.cli_output import CLIError, duration_arg, emit
    from omniq.migrate_db import migrate_db_async, unflag_async

    config = config_of(args)
    source = args.source or url_of(config)
    schema = config.settings.db_schema
    if args.unflag:
        cleared = await unflag_async(source, schema=schema)
        emit(
            args,
            {"unflagged": cleared},
            lambda: (
                "flag cleared: the database takes claims and enqueues again"
                if cleared
                else "the database was not flagged: nothing to do"
            ),
        )
        return 0
    if not args.target:
        raise CLIError("migrate-db needs --to URL (the database to move the queue to)")
    wait = duration_arg(args.timeout, "--timeout")
    progress = _Bar()
    try:
        report = await migrate_db_async(
            source,
            args.target,
            dry_run=args.dry_run,
            force=args.force,
            events=args.events,
            batch_size=args.batch_size,
            wait=wait,
            progress=progress,
            source_schema=schema,
            target_schema=args.to_schema,
        )
    finally:
        progress.close()
    emit(args, report.as_dict(), report.summary)
    return 0 if report.ok else 1
