"""The CLI's one-line explanations of connection problems name the right database."""

from __future__ import annotations

import argparse

from omniq.cli_errors import EXIT_FAILED, explain


def test_a_connection_lost_during_migrate_db_names_both_databases() -> None:
    args = argparse.Namespace(
        command="migrate-db",
        source="sqlite+aiosqlite:////data/queue.db",
        target="postgresql+asyncpg://app:secret@db.example:5432/queue",
    )
    message, code = explain(ConnectionResetError(104, "Connection reset by peer"), args)
    assert code == EXIT_FAILED
    assert "sqlite+aiosqlite:////data/queue.db" in message
    assert "postgresql+asyncpg://app:***@db.example:5432/queue" in message
    assert "secret" not in message
    assert "omniq_data" not in message  # not the default database, which it did not touch
