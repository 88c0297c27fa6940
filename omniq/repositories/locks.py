"""Locks repository: named leases in ``omniq_locks`` (one holder per name)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import locks as lk
from omniq.repositories._base import translate_errors


class LockRepository:
    """Acquire, renew and release named leases."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._insert = dialect.insert(lk).on_conflict_do_nothing(index_elements=[lk.c.name])

    def acquire(
        self, conn: Connection, name: str, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Take or renew lease ``name`` for ``owner`` if free, expired or already ours."""
        with translate_errors("acquire lock"):
            taken = conn.execute(
                sa.update(lk)
                .where(lk.c.name == name, sa.or_(lk.c.owner == owner, lk.c.expires_at < now))
                .values(owner=owner, acquired_at=now, expires_at=until)
            )
            if taken.rowcount:
                return True
            inserted = conn.execute(
                self._insert,
                {"name": name, "owner": owner, "acquired_at": now, "expires_at": until},
            )
            return bool(inserted.rowcount)

    def release(self, conn: Connection, name: str, owner: str) -> None:
        """Give up lease ``name`` if ``owner`` holds it."""
        with translate_errors("release lock"):
            conn.execute(sa.delete(lk).where(lk.c.name == name, lk.c.owner == owner))
