"""The WorkerInfo record: one running worker process, as its registry row shows it."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """A worker process registered in ``omniq_workers``.

    ``tasks_held`` (tasks running under its leases) and ``lost`` (its
    heartbeat is older than the bound it was read with) are filled in when
    the registry is listed.
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...] | None = None
    concurrency: int
    executor: str
    version: str
    started_at: datetime
    last_heartbeat: datetime
    tasks_held: int = 0
    lost: bool = False

    def is_lost(self, now: datetime, bound: timedelta) -> bool:
        """True when the last heartbeat is older than ``bound`` at ``now``."""
        return now - self.last_heartbeat > bound
