"""Flow control: the limited part of the claim, queue-wide limits and queue pause.

The plain claim (:meth:`TaskRepository.claim`) takes only tasks without keys
from queues without a row in ``omniq_limits``. A claim runs it first, guarded
by the condition that no limit row may bind the claim (then it takes what the
limited claim would have, in the same order); when that claims nothing,
:meth:`FlowControl._claim_within_limits` locks the rows that may bind the claim
(PostgreSQL: ``FOR UPDATE`` in key order; SQLite: the single writer). Without
any, the plain claim runs unguarded; with some, it counts running tasks per
concurrency key and queue, refills the token buckets by the time elapsed (the
storage clock), picks tasks in claim order within the budgets, claims them
and spends tokens.

A task held back costs nothing: it stays pending, its attempts unchanged.
Slots come back with the status change of the task that held them (counted,
not stored), so completion, failure, retry, release and lease recovery all
free them in their own transactions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omniq.db.writer import TooBigInline, running_inline
from omniq.errors import ValidationError
from omniq.models import Task
from omniq.models.limits import QueueLimits, Rate
from omniq.repositories.db_migration import refuse_if_migrated
from omniq.repositories.limits import CONCURRENCY, QUEUE, RATE
from omniq.services._storage import Storage
from omniq.services.enqueue import Enqueue

__all__ = ["LIMIT_RETENTION", "FlowControl"]

#: Budget keys: (kind, key); a queue's rate bucket is ("queue-rate", name).
_QUEUE_RATE = "queue-rate"
#: Keys without live tasks keep their rows this long (then maintenance prunes them:
#: every claim looks at the rows of keys with pending tasks, so rows must not pile up).
LIMIT_RETENTION = timedelta(hours=1)
#: Reads of candidates per queue and claim (each leaves out the keys that ran dry,
#: and reads twice as far as the one before).
_PICK_READS = 6
#: A read longer than this (after reads that ran dry) is cut to it.
_PICK_WINDOW = 1024
#: At most this many queue lists are remembered as limited (then forgotten at once).
_LIMITED_KEPT = 256


def _refill(row: dict[str, Any], now: datetime) -> float:
    """The tokens of a bucket row at ``now``: refilled by the time since ``refilled_at``."""
    limit = float(row["rate_limit"])
    per: timedelta = row["rate_period"]
    tokens = limit if row["tokens"] is None else float(row["tokens"])
    at: datetime | None = row["refilled_at"]
    elapsed = 0.0 if at is None else max(0.0, (now - at).total_seconds())
    return min(limit, tokens + elapsed * limit / per.total_seconds())


def _rate_needs(task: Task) -> list[tuple[str, str]]:
    """The rows whose rate a claim of ``task`` may have spent: its queue's, its key's."""
    needs = [(QUEUE, task.queue_name)]
    if task.rate_key is not None:
        needs.append((RATE, task.rate_key))
    return needs


def _token_due(row: dict[str, Any], tokens: float) -> float:
    """Seconds until a bucket holding ``tokens`` has one."""
    per: timedelta = row["rate_period"]
    return max(0.0, (1.0 - tokens) * per.total_seconds() / float(row["rate_limit"]))


class FlowControl(Enqueue):
    """Queue-wide limits and pause, and the claim of tasks that limits may hold back."""

    def __init__(self, storage: Storage, queues: Sequence[str] | None = None) -> None:
        super().__init__(storage, queues)
        #: By worker id: seconds until the next token is due, after that worker's
        #: last claim claimed nothing while rate limits held tasks back.
        self._flow_waits: dict[str, float] = {}
        #: The queue lists (as claims name them) whose last claim found limit rows
        #: that may bind it: their next claim locks those rows first, without
        #: trying the guarded plain claim (which would claim nothing).
        self._limited: set[tuple[str, ...]] = set()

    def take_flow_wait(self, worker_id: str) -> float | None:
        """How long ``worker_id``'s last claim says to wait for rate limits (then forgotten).

        After a claim that claimed nothing while rate limits held tasks back:
        seconds until the next token is due. A worker sleeps that long (or until
        woken, or its poll interval) instead of polling faster. Kept per worker:
        one queue object serves every worker of an app, and a worker must not
        sleep on the wait another worker's claim came back with.
        """
        return self._flow_waits.pop(worker_id, None)

    # --- the claim ------------------------------------------------------------------

    def _limits_met(self, queues: Sequence[str] | None) -> bool:
        """True if the last claim from ``queues`` found limit rows that may bind it."""
        return tuple(queues or ()) in self._limited

    def _claim_within_limits(
        self,
        conn: sa.Connection,
        *,
        queues: Sequence[str] | None,
        n: int,
        now: datetime,
        token: str,
        lease_until: datetime,
        worker_id: str,
        start: bool,
        unreadable: list[tuple[str, str]],
    ) -> list[Task]:
        """Claim up to ``n`` ready tasks of ``queues`` within every limit that applies.

        Without limit rows that concern these queues (no keyed task pending, no
        paused or limited queue), this is the plain claim statement: tried
        first, guarded by that very condition, unless the last claim from these
        queues found such rows; only when it claims nothing are the rows locked
        and read (one statement fewer per claim where no limits are used).
        """
        self._flow_waits.pop(worker_id, None)  # this claim's answer replaces the last one
        plain = functools.partial(
            self.storage.tasks.claim,
            conn,
            queues=queues,
            n=n,
            now=now,
            token=token,
            lease_until=lease_until,
            worker_id=worker_id,
            unreadable=unreadable,
            start=start,
        )
        seen = tuple(queues or ())
        if not self._limits_met(queues):
            unread = len(unreadable)
            first = plain(guarded=True)
            if first or len(unreadable) > unread:
                return first
        rows = self.storage.limits.lock_for_claim(conn, queues)
        if not rows:
            self._limited.discard(seen)
            return plain()
        if len(self._limited) >= _LIMITED_KEPT:
            self._limited.clear()
        self._limited.add(seen)
        if running_inline():
            raise TooBigInline  # the limited claim reads much: on the writer thread
        budget, buckets = self._budgets(conn, rows, now)
        targets: list[str | None] = list(queues) if queues else [None]
        claimed: list[Task] = []
        if all(left >= n for left in budget.values()):
            # Room for n tasks in every budget: any n ready tasks fit, in one statement.
            for queue in targets:
                keys, found = self.storage.limits.claim_open(
                    conn,
                    queue,
                    now,
                    open_keys=[key for kind, key in rows if kind == CONCURRENCY],
                    open_rate_keys=[key for kind, key in rows if kind == RATE],
                    closed_queues=[],
                    n=n - len(claimed),
                    token=token,
                    lease_until=lease_until,
                    worker_id=worker_id,
                    start=start,
                )
                claimed += self.storage.tasks.claimed_rows(keys, found, unreadable)
                if len(claimed) >= n:
                    break
        else:
            picked: list[str] = []
            for queue in targets:
                self._pick(conn, queue, n, now, rows, budget, picked)
                if len(picked) >= n:
                    break
            claimed = self.storage.tasks.claim_ids(
                conn,
                picked,
                now=now,
                token=token,
                lease_until=lease_until,
                worker_id=worker_id,
                start=start,
                unreadable=unreadable,
            )
        self._spend(conn, claimed, buckets, now)
        if not claimed:
            dues = [_token_due(row, budget[need]) for need, (_, row) in buckets.items()]
            dues = [due for due in dues if due > 0]
            if dues:
                self._flow_waits[worker_id] = min(dues)
        return claimed

    def _budgets(
        self, conn: sa.Connection, rows: dict[tuple[str, str], dict[str, Any]], now: datetime
    ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], tuple[str, dict[str, Any]]]]:
        """What each locked row still allows now: free slots, tokens (refilled to ``now``)."""
        keys = sorted(key for kind, key in rows if kind == CONCURRENCY)
        capped = sorted(
            key for (kind, key), row in rows.items() if kind == QUEUE and row["max_running"]
        )
        by_key, by_queue = self.storage.limits.running(conn, keys, capped)
        budget: dict[tuple[str, str], float] = {}
        buckets: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        for (kind, key), row in rows.items():
            if kind == CONCURRENCY:
                budget[kind, key] = (row["max_running"] or 0) - by_key.get(key, 0)
            elif kind == RATE:
                budget[kind, key] = _refill(row, now)
                buckets[kind, key] = (RATE, row)
            else:
                budget[QUEUE, key] = 0 if row["paused_at"] is not None else float("inf")
                if row["paused_at"] is None and row["max_running"] is not None:
                    budget[QUEUE, key] = row["max_running"] - by_queue.get(key, 0)
                if row["rate_limit"] is not None:
                    budget[_QUEUE_RATE, key] = _refill(row, now)
                    buckets[_QUEUE_RATE, key] = (QUEUE, row)
        return budget, buckets

    def _pick(
        self,
        conn: sa.Connection,
        queue: str | None,
        n: int,
        now: datetime,
        rows: dict[tuple[str, str], dict[str, Any]],
        budget: dict[tuple[str, str], float],
        picked: list[str],
    ) -> None:
        """Add to ``picked`` (up to ``n``) tasks of ``queue`` in claim order, each
        taking one of every budget it needs.

        Each read leaves out the keys and queues with nothing left, so a key at its
        limit never hides the tasks behind it; a read that ran dry of some key's
        budget is followed by another without that key, twice as long (a key's
        backlog in front of the next keys' tasks fills a read: many keys of
        ``Limit(1)`` with long backlogs), at most ``_PICK_READS`` in all.
        """
        for read in range(_PICK_READS):

            def is_open(kind: str) -> list[str]:
                return sorted(key for (k, key) in rows if k == kind and budget[k, key] >= 1)

            closed = sorted(
                key
                for (k, key) in rows
                if k == QUEUE and (budget[QUEUE, key] < 1 or budget.get((_QUEUE_RATE, key), 1) < 1)
            )
            want = n - len(picked)
            # Room for every task wanted in each budget: read just those (and a few);
            # else twice as many, as some will not fit.
            tight = any(0 < left < want for left in budget.values())
            base = want * 2 + 8 if tight else want + 8
            # Further after a read that ran dry, up to _PICK_WINDOW rows a read.
            limit = min(base << read, max(base, _PICK_WINDOW))
            found = self.storage.limits.candidates(
                conn,
                queue,
                now,
                open_keys=is_open(CONCURRENCY),
                open_rate_keys=is_open(RATE),
                closed_queues=closed,
                skip=picked,
                limit=limit,
            )
            ran_dry = False
            for x in found:
                if len(picked) >= n:
                    return
                needs = [
                    need
                    for need in (
                        (CONCURRENCY, x.concurrency_key),
                        (RATE, x.rate_key),
                        (QUEUE, x.queue_name),
                        (_QUEUE_RATE, x.queue_name),
                    )
                    if need in budget
                ]
                if any(budget[need] < 1 for need in needs):
                    ran_dry = True
                    continue
                for need in needs:
                    budget[need] -= 1
                picked.append(x.id)
            if len(picked) >= n or not ran_dry or len(found) < limit:
                return

    def _spend(
        self,
        conn: sa.Connection,
        claimed: Sequence[Task],
        buckets: dict[tuple[str, str], tuple[str, dict[str, Any]]],
        now: datetime,
    ) -> None:
        """Take one token per claimed task from each bucket that limits it."""
        used: dict[tuple[str, str], int] = {}
        for x in claimed:
            for need in ((RATE, x.rate_key), (_QUEUE_RATE, x.queue_name)):
                if need in buckets:
                    used[need] = used.get(need, 0) + 1
        spent = []
        for need, count in sorted(used.items()):
            kind, row = buckets[need]
            # Never back in time: a claimer whose clock is behind the last refill
            # (it waited for the lock, or its clock lags) refilled nothing (see
            # _refill); storing its older time would refill that interval twice.
            at = now if row["refilled_at"] is None else max(now, row["refilled_at"])
            spent.append((kind, need[1], _refill(row, now) - count, at))
        self.storage.limits.spend(conn, spent)

    def _rate_buckets(
        self, conn: sa.Connection, tasks: Sequence[Task], *, skip_locked: bool = False
    ) -> set[tuple[str, str]]:
        """Lock the rate buckets the claims of ``tasks`` took tokens from (their keys',
        their queues'), as a claim locks them: before any task row of a transaction
        that then gives tokens back (:meth:`_refund`), so it cannot deadlock with a
        claim. ``skip_locked``: for a transaction that holds task rows already; a
        bucket a claim holds right now is left out (its tokens are not given back)."""
        needs = sorted({need for x in tasks for need in _rate_needs(x)})
        return self.storage.limits.lock_buckets(conn, needs, skip_locked=skip_locked)

    def _refund(
        self, conn: sa.Connection, tasks: Sequence[Task], buckets: set[tuple[str, str]]
    ) -> None:
        """Give back the rate tokens the claims of these tasks took, to the ``buckets``
        locked by :meth:`_rate_buckets`: the tasks go back to pending without having
        started (a rate limits starts), so the next claim may take them at once
        instead of after a refill."""
        counts: dict[tuple[str, str], int] = {}
        for x in tasks:
            for need in _rate_needs(x):
                if need in buckets:
                    counts[need] = counts.get(need, 0) + 1
        self.storage.limits.refund(conn, [(k, key, n) for (k, key), n in sorted(counts.items())])

    async def prune_limits_async(self, idle_for: timedelta = LIMIT_RETENTION) -> int:
        """Delete the rows of keys no live task carries, declared more than
        ``idle_for`` ago (maintenance runs it); how many."""
        now = self.storage.now()
        return await self.storage.write(
            lambda conn: self.storage.limits.prune(conn, now, now - idle_for),
            what="prune limits",
        )

    # --- queue settings ---------------------------------------------------------------

    async def set_queue_limit_async(
        self,
        queue_name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | None = None,
    ) -> QueueLimits:
        """Limit a whole queue: at most ``concurrency`` of its tasks running, and ``rate``
        (a :class:`Rate` without key) starts; None removes that limit. Returns the settings."""
        _queue_name(queue_name)
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency < 2**31
        ):
            raise ValidationError("concurrency", f"must be a positive integer, got {concurrency!r}")
        if rate is not None:
            if not isinstance(rate, Rate):
                raise ValidationError("rate", f"expected a Rate(...), got {rate!r}")
            if rate.key is not None or rate.key_arg is not None:
                raise ValidationError("rate.key", "a queue's rate applies to the whole queue")
        now = self.storage.now()

        def body(conn: sa.Connection) -> QueueLimits:
            refuse_if_migrated(conn)  # the source of a migration is read-only
            repo = self.storage.limits
            row = repo.get(conn, QUEUE, queue_name) or {"paused_at": None, "tokens": None}
            same_rate = rate is not None and row.get("rate_limit") == rate.limit
            values = {
                "kind": QUEUE,
                "key": queue_name,
                "max_running": concurrency,
                "rate_limit": None if rate is None else rate.limit,
                "rate_period": None if rate is None else rate.per,
                "tokens": None if rate is None else (row["tokens"] if same_rate else rate.limit),
                "refilled_at": row.get("refilled_at") if same_rate else now,
                "paused_at": row["paused_at"],
                "updated_at": now,
            }
            return self._store_queue(conn, values)

        settings = await self.storage.write(body, what="set queue limit")
        self.storage.notifier.notify()
        return settings

    async def clear_queue_limit_async(self, queue_name: str) -> QueueLimits:
        """Remove a queue's limits (a pause stays); return its settings."""
        return await self.set_queue_limit_async(queue_name)

    async def get_queue_limit_async(self, queue_name: str) -> QueueLimits:
        """A queue's limits and pause state (no row: no limits, not paused)."""
        _queue_name(queue_name)

        def body(conn: sa.Connection) -> dict[str, Any] | None:
            return self.storage.limits.get(conn, QUEUE, queue_name)

        row = await self.storage.read(body, what="get queue limit")
        return _settings(queue_name, row)

    async def list_queue_limits_async(self) -> list[QueueLimits]:
        """Every queue with limits or paused, by name."""
        rows = await self.storage.read(
            lambda conn: self.storage.limits.of_kind(conn, QUEUE), what="list queue limits"
        )
        return [_settings(row["key"], row) for row in rows]

    async def pause_queue_async(self, queue_name: str) -> bool:
        """Stop workers from claiming the queue's tasks (enqueue still works; running
        tasks finish). Stored in the database: it holds until :meth:`resume_queue_async`,
        across restarts. Returns False if it was already paused."""
        return await self._set_paused(queue_name, True)

    async def resume_queue_async(self, queue_name: str) -> bool:
        """Let workers claim the queue's tasks again; False if it was not paused."""
        return await self._set_paused(queue_name, False)

    async def list_paused_queues_async(self) -> list[str]:
        """The names of the paused queues."""
        return [x.queue_name for x in await self.list_queue_limits_async() if x.paused]

    async def _set_paused(self, queue_name: str, paused: bool) -> bool:
        _queue_name(queue_name)
        now = self.storage.now()

        def body(conn: sa.Connection) -> bool:
            refuse_if_migrated(conn)
            repo = self.storage.limits
            row = repo.get(conn, QUEUE, queue_name)
            was = row is not None and row["paused_at"] is not None
            if was == paused:
                return False
            values: dict[str, Any] = {"kind": QUEUE, "key": queue_name}
            if row is not None:
                values.update(row)
            values.update(paused_at=now if paused else None, updated_at=now)
            self._store_queue(conn, values)
            return True

        changed = await self.storage.write(body, what="pause queue" if paused else "resume queue")
        self.storage.notifier.notify()
        return changed

    def _store_queue(self, conn: sa.Connection, values: dict[str, Any]) -> QueueLimits:
        """Write a queue row; a queue without limits or pause keeps no row (its claims
        then take the plain path)."""
        row = {c: values.get(c) for c in _QUEUE_COLUMNS}
        name = str(values["key"])
        if row["max_running"] is None and row["rate_limit"] is None and row["paused_at"] is None:
            self.storage.limits.delete(conn, QUEUE, name)
        else:
            self.storage.limits.put(conn, row)
        return _settings(name, row)


_QUEUE_COLUMNS = (
    "kind",
    "key",
    "max_running",
    "rate_limit",
    "rate_period",
    "tokens",
    "refilled_at",
    "paused_at",
    "updated_at",
)


def _queue_name(value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 200 or "\x00" in value:
        raise ValidationError("queue_name", f"must be 1-200 characters without NUL, got {value!r}")


def _settings(queue_name: str, row: dict[str, Any] | None) -> QueueLimits:
    if row is None:
        return QueueLimits(queue_name=queue_name)
    rate = None
    if row.get("rate_limit") is not None:
        rate = Rate(row["rate_limit"], per=row["rate_period"])
    return QueueLimits(
        queue_name=queue_name,
        concurrency=row.get("max_running"),
        rate=rate,
        paused_at=row.get("paused_at"),
    )
