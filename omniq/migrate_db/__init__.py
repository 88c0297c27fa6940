"""Graduate a queue from one database to another: ``omniq migrate-db`` and its API.

``migrate_db_async(source_url, target_url)`` (and the blocking
``migrate_db``) copies every OmniQ table into the target (upgraded to head),
leaves the source flagged read-only, and returns a :class:`MigrationReport`;
``unflag_async(url)`` / ``unflag(url)`` clears the flag.
"""

from __future__ import annotations

from omniq.migrate_db.plan import Rule, TablePlan, plan
from omniq.migrate_db.report import MigrationReport, Progress, TableReport
from omniq.migrate_db.run import migrate_db, migrate_db_async, unflag, unflag_async

__all__ = [
    "MigrationReport",
    "Progress",
    "Rule",
    "TablePlan",
    "TableReport",
    "migrate_db",
    "migrate_db_async",
    "plan",
    "unflag",
    "unflag_async",
]
