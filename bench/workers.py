"""Worker processes (bench/omniq_worker.py) started together, and what they report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Child, child_env, rate


def worker_children(
    url: str,
    count: int,
    cwd: Path,
    *,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> list[Child]:
    """Start ``count`` worker processes on ``url``; return once all are ready."""
    children = [
        Child(["-m", "bench.omniq_worker", url, *extra], cwd, child_env(**(env or {})))
        for _ in range(count)
    ]
    try:
        for child in children:
            child.expect("ready", timeout=120)
    except BaseException:
        for child in children:
            child.kill()
        raise
    return children


def run_omniq_workers(
    url: str,
    count: int,
    cwd: Path,
    *,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Start ``count`` burst-mode workers on ``url`` together; their ``done`` reports."""
    children = worker_children(url, count, cwd, extra=extra, env=env)
    try:
        for child in children:
            child.send("go")
        reports = [child.expect("done", timeout=900) for child in children]
        for child in children:
            child.finish()
    finally:
        for child in children:
            child.kill()
    return reports


def span_rate(reports: list[dict[str, Any]], *, settled: bool = False) -> tuple[int, float]:
    """(tasks done, tasks/s from the earliest first claim to the latest outcome).

    Done means completed, or with ``settled`` completed or failed (final outcomes).
    """
    firsts = [float(r["first_claim"]) for r in reports if r.get("first_claim") is not None]
    lasts = [float(r["last_complete"]) for r in reports if r.get("last_complete") is not None]
    done = sum(int(r["completed"]) + (int(r.get("failed", 0)) if settled else 0) for r in reports)
    if not firsts or not lasts:
        return done, 0.0
    return done, rate(done, max(lasts) - min(firsts))


def executions(record_dir: Path) -> list[str]:
    """The ids that ``bench.tasks.record`` logged under ``record_dir`` (one per run)."""
    executed: list[str] = []
    for log in record_dir.glob("exec-*.log"):
        executed.extend(log.read_text().split())
    return executed


def client_profile(report: dict[str, Any], n: int, per: int = 100, what: str = "tasks") -> str:
    """What one worker process spent and sent over its span, per ``per`` of its ``n`` tasks.

    CPU share always; statements, transactions and waits when it ran with ``--trace-sql``.
    """
    first, last = report.get("first_claim"), report.get("last_complete")
    span = float(last) - float(first) if first is not None and last is not None else 0.0
    if span <= 0:
        return ""
    unit = f"per {per:,} {what}" if per != 1 else f"per {what}"
    parts = []
    cpu = report.get("cpu_s")
    if cpu is not None:
        parts.append(f"the worker process used {cpu / span:.0%} of a CPU over its span")
    sql = report.get("sql") or {}
    if sql:
        scale = per / n
        trips = sql["statements"] + sql["begins"] + sql["commits"] + sql["rollbacks"]
        trips += sql["pings"]
        kinds = sorted(sql["kinds"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v * scale:.2g}" for k, v in kinds[:6])
        parts.append(
            f"{unit} it sent {sql['statements'] * scale:.2g} statements ({shown}) through "
            f"SQLAlchemy in {sql['begins'] * scale:.2g} transactions, plus "
            f"{sql['pings'] * scale:.2g} pool pre-pings: ~{trips * scale:.2g} round trips "
            "counting BEGIN and COMMIT; coroutines awaited statements for "
            f"{sql['statement_s'] / span:.0%} of the span, pre-pings {sql['ping_s'] / span:.0%} "
            "(wall time summed over concurrent coroutines, event-loop delays included); "
            + _pool_use(sql)
        )
    return "; ".join(parts)


def _pool_use(sql: dict[str, Any]) -> str:
    """How full the connection pool got (a pool that never ran out made nobody wait)."""
    peak, size = sql.get("peak_out", 0), sql.get("pool_size", 0)
    if not size:
        return f"at most {peak} connection(s) checked out at once"
    verdict = "never ran out" if peak < size else "ran out: check-outs may have waited"
    return f"at most {peak} of the pool's {size} connections checked out at once ({verdict})"
