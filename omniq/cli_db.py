"""``omniq db``: upgrade, current, check and downgrade the schema (Alembic).

``current`` and ``check`` only read: a SQLite file that does not exist is
reported, not created. ``downgrade`` needs an explicit revision, says which
revisions it undoes (from their docstrings) and asks before it drops
anything (``--yes`` for scripts; without a terminal and without ``--yes`` it
refuses).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import attrs

from omniq.cli_context import require_database, url_of
from omniq.cli_output import CLIError, emit
from omniq.config import OmniQConfig

__all__ = ["check_revision", "cmd_db", "revisions_between"]

#: A ``db check`` summary lists at most this many differences.
_SHOWN_DIFFERENCES = 8


def revisions_between(current: str | None, target: str) -> list[tuple[str, str]]:
    """``(revision, first docstring line)`` of the revisions a downgrade to ``target`` undoes."""
    from alembic.script import ScriptDirectory

    from omniq.db import migrate

    if current is None:
        return []
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    undone = scripts.iterate_revisions(current, target)
    return [(s.revision, (s.doc or "").strip()) for s in undone if s is not None]


def check_revision(action: str, target: str) -> None:
    """Refuse a revision the shipped migrations do not know (bad input: exit 2)."""
    from alembic.script import ScriptDirectory

    from omniq.db import migrate

    if target in ("head", "base", "heads"):
        return
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    try:
        found = scripts.get_revision(target)
    except Exception:
        found = None
    if found is None:
        known = ", ".join(s.revision for s in reversed(list(scripts.walk_revisions())))
        raise CLIError(f"db {action}: unknown revision {target!r} (known: base, {known}, head)")


def _describe_difference(diff: Any) -> str:
    """One readable line for an Alembic autogenerate difference."""
    if isinstance(diff, list):  # modifications of one column come grouped
        diff = diff[0] if diff else ("?",)
    kind = str(diff[0]) if diff else "?"
    names = []
    for part in diff[1:]:
        name = getattr(part, "name", None)
        if name is not None:
            names.append(str(name))
        elif isinstance(part, str):
            names.append(part)
    what = ".".join(n for n in names[:2] if n) or "?"
    return f"{kind.replace('_', ' ')} {what}"


def _summary(current: str | None, head: str, diffs: list[Any]) -> str:
    lines = [f"schema differs from head: database at {current or '<empty>'}, head is {head}"]
    described = [_describe_difference(d) for d in diffs]
    for line in described[:_SHOWN_DIFFERENCES]:
        lines.append(f"  {line}")
    if len(described) > _SHOWN_DIFFERENCES:
        lines.append(f"  ... and {len(described) - _SHOWN_DIFFERENCES} more (--json lists all)")
    if current != head:
        lines.append("run `omniq db upgrade` to bring it to head")
    return "\n".join(lines)


def _confirm(args: argparse.Namespace, current: str | None, target: str) -> None:
    undone = revisions_between(current, target)
    if not undone:
        return
    lines = [f"downgrading from {current} to {target} undoes, dropping what they added:"]
    lines += [f"  {revision}  {doc}" for revision, doc in undone]
    sys.stderr.write("\n".join(lines) + "\n")
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CLIError("db downgrade drops data: refusing without a terminal; pass --yes to do it")
    sys.stderr.write("Type 'yes' to continue: ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CLIError("db downgrade: not confirmed, nothing changed", code=1)


async def cmd_db(args: argparse.Namespace, config: OmniQConfig) -> int:
    """Run ``omniq db ACTION``."""
    from omniq.db import migrate
    from omniq.db.engine import create_engine

    url = url_of(config)
    if args.action in ("current", "check"):
        require_database(url)
    if args.action == "downgrade" and not args.revision:
        raise CLIError(
            "db downgrade needs the target revision, e.g. `omniq db downgrade 0007` "
            "(`base` removes every table)"
        )
    if args.action in ("upgrade", "downgrade") and args.revision:
        check_revision(args.action, args.revision)
    head = migrate.head()
    # Migrations may run long statements (an index on a big table): no server_timeout.
    engine = create_engine(url, attrs.evolve(config.settings, server_timeout=None))
    try:
        if args.action == "upgrade":
            await migrate.upgrade_async(engine, args.revision or "head")
            current = await migrate.current_async(engine)
            emit(args, {"current": current}, lambda: f"database at revision {current}")
        elif args.action == "downgrade":
            current = await migrate.current_async(engine)
            _confirm(args, current, args.revision)
            await migrate.downgrade_async(engine, args.revision)
            current = await migrate.current_async(engine)
            emit(args, {"current": current}, lambda: f"database at revision {current or 'base'}")
        elif args.action == "current":
            current = await migrate.current_async(engine)
            data: dict[str, Any] = {"current": current, "head": head, "up_to_date": current == head}
            emit(args, data, lambda: f"current {current or '<empty>'} (head {head})")
        else:
            current = await migrate.current_async(engine)
            diffs = await migrate.diff_async(engine)
            ok = not diffs and current == head
            data = {
                "current": current,
                "head": head,
                "differences": [str(d) for d in diffs],
            }
            text = "schema matches head" if ok else _summary(current, head, diffs)
            emit(args, data, lambda: text)
            return 0 if ok else 1
    finally:
        await engine.dispose()
    return 0
