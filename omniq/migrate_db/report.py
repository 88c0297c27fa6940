"""What ``omniq migrate-db`` reports: per table, the rows on each side, and a summary."""

from __future__ import annotations

from datetime import datetime

import attrs

__all__ = ["MigrationReport", "Progress", "TableReport"]


@attrs.frozen
class Progress:
    """Where the copy is: ``done`` of ``total`` rows of ``table`` read (``written`` new)."""

    table: str
    done: int
    total: int
    written: int


@attrs.frozen
class TableReport:
    """One table: copied or skipped, and its rows per status on each side.

    ``source`` counts the rows the copy takes, with the statuses they get on
    the target (a running task counts as pending); ``target`` counts the
    target's rows after the copy (before it, in a dry run). A table without
    a status column has one count, under ``"*"``.
    """

    table: str
    copied: bool
    reason: str | None = None
    source: dict[str, int] = attrs.field(factory=dict)
    target: dict[str, int] = attrs.field(factory=dict)
    #: Rows this run wrote (0 for a dry run, a skipped table, or a finished resume).
    written: int = 0

    @property
    def matches(self) -> bool:
        """True when the target holds as many rows per status as the source gave."""
        return not self.copied or self.source == self.target


@attrs.frozen
class MigrationReport:
    """The outcome of :func:`omniq.migrate_db.migrate_db_async` (URLs without passwords)."""

    migration_id: str
    source: str
    target: str
    head: str
    dry_run: bool
    #: The target's revision before the run (None: an empty database).
    target_revision: str | None
    #: This run went on with an interrupted migration of the same source.
    resumed: bool
    #: The migration had already finished: nothing was copied again.
    already_done: bool
    #: Results unexpired at this instant were copied (kept across resumes).
    cutoff: datetime
    #: Tasks running on the source that ``force`` gave back to pending.
    released: int
    #: Tasks running on the source at the start (a dry run: would wait for them).
    running: int
    #: Tables whose PostgreSQL sequence was advanced past the copied ids.
    sequences: list[str]
    tables: list[TableReport]

    @property
    def ok(self) -> bool:
        """True when every copied table's counts match (always for a dry run)."""
        return self.dry_run or self.already_done or all(t.matches for t in self.tables)

    @property
    def mismatches(self) -> list[TableReport]:
        return [t for t in self.tables if not t.matches]

    def as_dict(self) -> dict[str, object]:
        """The JSON form (``--json``)."""
        data = attrs.asdict(self, recurse=True)
        data["cutoff"] = self.cutoff.isoformat()
        data["ok"] = self.ok
        for table, item in zip(data["tables"], self.tables, strict=True):
            table["matches"] = item.matches
        return data

    def summary(self) -> str:
        """Human-readable lines: what was (or would be) copied, and the verification."""
        if self.dry_run:
            head = f"dry run: nothing changed; {self.source} -> {self.target}"
        elif self.already_done:
            head = f"already migrated (migration {self.migration_id}): nothing to copy"
        else:
            verb = "resumed and finished" if self.resumed else "migrated"
            head = f"{verb} {self.source} -> {self.target} (migration {self.migration_id})"
        lines = [head]
        if self.dry_run:
            revision = self.target_revision or "<empty>"
            lines.append(f"target at revision {revision}; head is {self.head}")
            if self.running:
                lines.append(f"{self.running} task(s) running on the source now (would wait)")
        if self.released:
            lines.append(f"released {self.released} running task(s) on the source (--force)")
        for t in self.tables:
            if not t.copied:
                lines.append(f"  {t.table}: skipped ({t.reason})")
                continue
            counts = ", ".join(f"{k}={v}" for k, v in sorted(t.source.items())) or "0 rows"
            if self.dry_run:
                there = sum(t.target.values())
                lines.append(f"  {t.table}: {counts} (target holds {there})")
            else:
                check = "ok" if t.matches else f"MISMATCH target {t.target}"
                lines.append(f"  {t.table}: {counts}; written {t.written}; {check}")
        if self.sequences:
            lines.append(f"sequences advanced: {', '.join(self.sequences)}")
        if not self.dry_run and self.ok:
            lines.append(
                "the source is flagged read-only (workers there claim nothing); "
                "point OMNIQ_DATABASE_URL at the target"
            )
        return "\n".join(lines)
