"""The benchmark suite: runs every measurement beside its comparison, prints one table.

Timings are reported, never asserted. Each rate is the best of a few runs
(the machine is shared), and every ratio compares numbers taken in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    dashboard,
    failing,
    huey_side,
    limits,
    omniq_side,
    pg_side,
    raw_sqlite,
    startup,
    tracing,
    workers,
)
from bench.common import (
    Child,
    Row,
    child_env,
    fmt_rate,
    percentile,
    rate,
    ratio_row,
    skipped_row,
    sqlite_url,
    verdict,
)
from bench.tasks import RECORD_DIR_ENV, STAMP_FILE_ENV
from bench.workers import executions, span_rate
from bench.workspace import FULL, QUICK, SMOKE, Sizes, Workspace

#: Benchmark labels, in table order (the smoke test looks for each).
LABELS = (
    "1. enqueue_many (batch 1k)",
    "1r. enqueue_many vs raw sqlite3",
    "2. enqueue_async sequential",
    "3. enqueue_async 100 producers",
    "4. claim+complete at big backlog",
    "5. burn-down, 1 worker process",
    "6a. 2 worker processes vs 1",
    "6b. 4 worker processes vs 1",
    "7a. latency, in-process worker",
    "7b. latency, worker process",
    "8. worker RSS, many vs few tasks",
    *failing.LABELS,
    *pg_side.LABELS,
    *dashboard.LABELS,
    *startup.LABELS,
    *tracing.LABELS,
    *limits.LABELS,
)
#: Shown under row 5 (measured in the same runs): the burn-down with Prometheus metrics on.
METRICS_LABEL = "5m. burn-down, metrics on vs off"
HEADER = ("benchmark", "omniq", "comparison", "ratio", "target")


# --- 1-3: enqueue -------------------------------------------------------------------------


def bench_enqueue_many(ws: Workspace, sizes: Sizes) -> list[Row]:
    omniq = huey = raw = 0.0
    for _ in range(sizes.repeats):
        omniq = max(
            omniq,
            asyncio.run(omniq_side.enqueue_many_rate(ws.omniq_db("many"), sizes.enqueue_many)),
        )
        huey = max(huey, huey_side.enqueue_rate(ws.huey_db("enq"), sizes.huey_enqueue))
        raw = max(raw, raw_sqlite.enqueue_rate(ws.omniq_db("raw"), sizes.enqueue_many, ws.template))
    stock = huey_side.enqueue_rate(ws.huey_db("stock"), sizes.huey_default_enqueue, "default")
    return [
        ratio_row(
            LABELS[0],
            omniq,
            huey,
            2.0,
            ">= 2x (goal 5x)",
            f"{sizes.enqueue_many:,} tasks built and written by enqueue_many_async in batches "
            f"of 1,000 vs {sizes.huey_enqueue:,} calls of a @huey.task no-op on SqliteHuey "
            f"(WAL, synchronous=NORMAL like OmniQ). Stock SqliteHuey (synchronous=FULL, an "
            f"fsync per enqueue) did {fmt_rate(stock)}: OmniQ is {omniq / stock:.1f}x that.",
        ),
        Row(
            LABELS[1],
            fmt_rate(omniq),
            fmt_rate(raw),
            omniq / raw if raw else 0.0,
            "ref",
            None,
            "The same task + event rows into OmniQ's schema with plain sqlite3 executemany, "
            "one transaction per 1,000 (WAL, NORMAL): the floor OmniQ's per-row Python adds to.",
        ),
    ]


def bench_enqueue_single(ws: Workspace, sizes: Sizes) -> list[Row]:
    omniq = huey = 0.0
    for _ in range(sizes.repeats):
        omniq = max(
            omniq, asyncio.run(omniq_side.enqueue_single_rate(ws.omniq_db("one"), sizes.single))
        )
        huey = max(huey, huey_side.enqueue_rate(ws.huey_db("enq"), sizes.huey_enqueue))
    return [
        ratio_row(
            LABELS[2],
            omniq,
            huey,
            0.1,
            ">= 0.1x (goal 0.25x)",
            f"{sizes.single:,} sequential `await queue.enqueue_async(noop, [i])` (one "
            "transaction each: task + event) vs Huey enqueue (NORMAL) as in 1.",
        )
    ]


def bench_enqueue_concurrent(ws: Workspace, sizes: Sizes) -> list[Row]:
    omniq = huey = 0.0
    for _ in range(sizes.repeats):
        omniq = max(
            omniq,
            asyncio.run(
                omniq_side.enqueue_concurrent_rate(
                    ws.omniq_db("conc"), sizes.producers, sizes.per_producer
                )
            ),
        )
        huey = max(huey, huey_side.enqueue_rate(ws.huey_db("enq"), sizes.huey_enqueue))
    return [
        ratio_row(
            LABELS[3],
            omniq,
            huey,
            0.5,
            ">= 0.5x (goal 1x)",
            f"asyncio.gather of {sizes.producers} coroutines, each awaiting "
            f"{sizes.per_producer} enqueue_async in turn (group commit shares transactions) "
            "vs Huey enqueue (NORMAL) as in 1.",
        )
    ]


# --- 4: claim rate vs backlog ---------------------------------------------------------------


def bench_claim(ws: Workspace, sizes: Sizes) -> list[Row]:
    big, small = asyncio.run(
        omniq_side.claim_rates(
            ws.omniq_db("claim-big"),
            ws.omniq_db("claim-small"),
            (sizes.claim_backlog, sizes.claim_small),
            sizes.claim_per_run,
            sizes.repeats,
        )
    )
    return [
        ratio_row(
            LABELS[4],
            big,
            small,
            0.8,
            ">= 0.8x",
            f"dequeue_many_async(100) + complete_many_async rounds, {sizes.claim_per_run:,} "
            f"tasks per run, on a {sizes.claim_backlog:,}-task backlog (omniq) vs a "
            f"{sizes.claim_small:,}-task backlog refilled after each round (comparison); "
            "the two take turns every 5 rounds, refills untimed.",
        )
    ]


# --- 5-6, 7b, 8: worker processes --------------------------------------------------------------


def run_omniq_workers(
    ws: Workspace,
    db: Path,
    count: int,
    *,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Start ``count`` burst-mode workers on the SQLite file ``db`` together; their reports."""
    return workers.run_omniq_workers(sqlite_url(db), count, ws.root, extra=extra, env=env)


def _omniq_burn(ws: Workspace, n: int, *, metrics: bool = False) -> float:
    db = ws.omniq_db("burn")
    asyncio.run(omniq_side.fill(db, n))
    reports = run_omniq_workers(ws, db, 1, extra=("--metrics",) if metrics else ())
    done, tasks_per_s = span_rate(reports)
    if done != n:
        raise RuntimeError(f"the OmniQ worker completed {done} of {n} tasks")
    if metrics and reports[0]["metrics_finished"] != n:
        raise RuntimeError(f"the metrics counted {reports[0]['metrics_finished']} of {n} tasks")
    return tasks_per_s


def _huey_burn(ws: Workspace, n: int) -> float:
    db = ws.huey_db("burn")
    huey_side.fill(db, n)
    child = Child(["-m", "bench.huey_side", str(db), str(n)], ws.root, child_env())
    try:
        child.expect("ready", timeout=120)
        child.send("go")
        report = child.expect("done", timeout=900)
        child.finish()
    finally:
        child.kill()
    if not report["ok"] or report["completed"] != n:
        raise RuntimeError(f"the Huey consumer completed {report['completed']} of {n} tasks")
    return rate(n, float(report["last_complete"]) - float(report["first_claim"]))


def bench_burn(ws: Workspace, sizes: Sizes) -> list[Row]:
    omniq = huey = metered = 0.0
    metrics = _has_metrics()
    for _ in range(sizes.process_repeats):
        omniq = max(omniq, _omniq_burn(ws, sizes.burn))
        if metrics:
            metered = max(metered, _omniq_burn(ws, sizes.burn, metrics=True))
        huey = max(huey, _huey_burn(ws, sizes.burn))
    return [
        ratio_row(
            LABELS[5],
            omniq,
            huey,
            0.5,
            ">= 0.5x (goal 1x)",
            f"{sizes.burn:,} pre-enqueued sync no-op tasks drained by one worker process "
            "(bench/omniq_worker.py: Worker at default settings, its process set up as "
            "`omniq worker` does (start-up heap frozen): concurrency 10, adaptive "
            "prefetch, async executor -> thread pool for sync functions, results and events "
            "on), from its "
            "first claim to its last committed completion (timed inside the process) vs "
            "Huey's Consumer(workers=1, worker_type='thread') from its first dequeue to the "
            "last `complete` signal. Per task OmniQ also writes "
            "a result row and 3 events; Huey stores nothing for a None result.",
        ),
        ratio_row(
            METRICS_LABEL,
            metered,
            omniq,
            0.9,
            ">= 0.9x",
            "Row 5's burn-down with Prometheus metrics on (Worker(metrics=WorkerMetrics()) "
            "and its HTTP server, as `omniq worker --metrics-port`: per attempt a wait and a "
            "duration observation and an outcome count; the metrics page, scraped once at "
            "the end, counted every task) vs off (row 5's number), best of the same runs.",
        )
        if metrics
        else skipped_row(METRICS_LABEL, 'install the metrics extra: pip install "omniq[metrics]"'),
    ]


def _has_metrics() -> bool:
    """True when prometheus_client (the metrics extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("prometheus_client") is not None


def _multi_run(ws: Workspace, n: int, processes: int) -> tuple[float, int, int]:
    """(tasks/s, executions recorded, distinct ids executed) for one run."""
    db = ws.omniq_db(f"multi{processes}")
    asyncio.run(omniq_side.fill(db, n, func="bench.tasks:record"))
    record_dir = ws.directory(f"exec{processes}")
    reports = run_omniq_workers(ws, db, processes, env={RECORD_DIR_ENV: str(record_dir)})
    done, tasks_per_s = span_rate(reports)
    executed = executions(record_dir)
    if done != n:
        raise RuntimeError(f"{processes} workers completed {done} of {n} tasks")
    return tasks_per_s, len(executed), len(set(executed))


def bench_multi(ws: Workspace, sizes: Sizes) -> list[Row]:
    n = sizes.multi
    best: dict[int, float] = {1: 0.0, 2: 0.0, 4: 0.0}
    exact = {2: True, 4: True}
    counts: dict[int, str] = {}
    for _ in range(sizes.process_repeats):
        for processes in (1, 2, 4):
            tasks_per_s, runs, distinct = _multi_run(ws, n, processes)
            best[processes] = max(best[processes], tasks_per_s)
            if processes in exact:
                exact[processes] = exact[processes] and runs == n and distinct == n
                counts[processes] = f"{runs:,} runs of {distinct:,} ids"
    rows = []
    for label, processes in ((LABELS[6], 2), (LABELS[7], 4)):
        ratio = best[processes] / best[1] if best[1] else 0.0
        ok = ratio >= 0.9 and exact[processes]
        rows.append(
            Row(
                label,
                fmt_rate(best[processes]),
                fmt_rate(best[1]),
                ratio,
                f"{verdict(ok)} >= 0.9x, 0 double runs",
                ok,
                f"{n:,} tasks that append their id to a per-process file, drained by "
                f"{processes} worker processes on one SQLite file vs 1 process; executions "
                f"counted exactly ({counts.get(processes, '?')}, "
                f"{'no double or missed runs' if exact[processes] else 'DOUBLE OR MISSED RUNS'}"
                f"); rate from the earliest first claim to the latest completion.",
            )
        )
    return rows


def bench_latency(ws: Workspace, sizes: Sizes) -> list[Row]:
    p50_in, p95_in = asyncio.run(omniq_side.in_process_latency(ws.omniq_db("lat"), sizes.latency))
    db = ws.omniq_db("lat-proc")
    stamp_file = ws.root / f"stamps-{time.monotonic_ns()}.txt"
    children = workers.worker_children(
        sqlite_url(db), 1, ws.root, extra=("--serve",), env={STAMP_FILE_ENV: str(stamp_file)}
    )
    child = children[0]
    try:
        child.send("go")
        enqueued = asyncio.run(omniq_side.enqueue_spaced(db, sizes.latency))
        started: dict[int, float] = {}
        deadline = time.monotonic() + 60
        while len(started) < len(enqueued) and time.monotonic() < deadline:
            time.sleep(0.05)
            if stamp_file.exists():
                for line in stamp_file.read_text().splitlines():
                    key, _, when = line.partition(" ")
                    if when:
                        started[int(key)] = float(when)
        child.send("stop")
        child.expect("done", timeout=120)
        child.finish()
    finally:
        child.kill()
    if len(started) < len(enqueued):
        raise RuntimeError(f"only {len(started)} of {len(enqueued)} latency probes ran")
    latencies = [started[i] - enqueued[i] for i in enqueued]
    p50_out, p95_out = percentile(latencies, 50), percentile(latencies, 95)

    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    return [
        Row(
            LABELS[8],
            f"p50 {ms(p50_in)}",
            f"p95 {ms(p95_in)}",
            None,
            f"{verdict(p50_in <= 0.010)} p50 <= 10 ms",
            p50_in <= 0.010,
            f"{sizes.latency} enqueue_async calls 10-100 ms apart; the worker runs on the "
            "producer's event loop (idle, woken by the in-process notifier); latency = "
            "time.time() at the task's start minus time.time() before the enqueue call.",
        ),
        Row(
            LABELS[9],
            f"p50 {ms(p50_out)}",
            f"p95 {ms(p95_out)}",
            None,
            f"{verdict(p50_out <= 0.100)} p50 <= 100 ms",
            p50_out <= 0.100,
            f"The same {sizes.latency} probes with the worker in another process at default "
            "settings (it polls: adaptive 5 ms doubling up to poll_interval=1 s after activity).",
        ),
    ]


def bench_rss(ws: Workspace, sizes: Sizes) -> list[Row]:
    db = ws.omniq_db("rss")
    asyncio.run(omniq_side.fill(db, sizes.rss_high))
    reports = run_omniq_workers(
        ws,
        db,
        1,
        extra=("--rss-at", f"{sizes.rss_low},{sizes.rss_high}", "--concurrency", "100"),
    )
    rss = reports[0]["rss_kib"]
    low, high = int(rss[str(sizes.rss_low)]), int(rss[str(sizes.rss_high)])
    ratio = high / low if low else 0.0
    ok = ratio <= 1.2

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    return [
        Row(
            LABELS[10],
            mib(high),
            mib(low),
            ratio,
            f"{verdict(ok)} <= 1.2x",
            ok,
            f"VmRSS of one worker process (read in-process) after {sizes.rss_high:,} "
            f"completed no-op tasks (omniq) vs after {sizes.rss_low:,} (comparison), same "
            f"run, {sizes.rss_high:,} pre-enqueued; concurrency=100 (else defaults) to keep "
            "the run short.",
        )
    ]


# --- table -------------------------------------------------------------------------------------

BENCHMARKS: tuple[tuple[str, Callable[[Workspace, Sizes], list[Row]], tuple[str, ...]], ...] = (
    ("enqueue_many", bench_enqueue_many, LABELS[0:2]),
    ("enqueue_async sequential", bench_enqueue_single, LABELS[2:3]),
    ("enqueue_async concurrent", bench_enqueue_concurrent, LABELS[3:4]),
    ("claim rate", bench_claim, LABELS[4:5]),
    ("burn-down", bench_burn, (LABELS[5], METRICS_LABEL)),
    ("multi-process", bench_multi, LABELS[6:8]),
    ("latency", bench_latency, LABELS[8:10]),
    ("worker RSS", bench_rss, LABELS[10:11]),
    ("failing tasks", failing.bench_failing, failing.LABELS),
    ("postgresql", pg_side.bench_postgres, pg_side.LABELS),
    ("dashboard task list", dashboard.bench_dashboard, dashboard.LABELS),
    ("command start-up", startup.bench_startup, startup.LABELS),
    ("tracing", tracing.bench_tracing, tracing.LABELS),
    ("flow control", limits.bench_limits, limits.LABELS),
)


def render(rows: list[Row]) -> str:
    """The table and one explanatory line per row."""
    cells = [HEADER] + [
        (
            r.benchmark,
            r.omniq,
            r.comparison,
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 4) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    out.append("")
    out += [f"{r.benchmark.split(' ', 1)[0]} {r.note}" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the table. Exit 1 only if a benchmark could not run."""
    parser = argparse.ArgumentParser(description="OmniQ benchmarks (reports, never asserts).")
    parser.add_argument("--quick", action="store_true", help="small sizes (< 90 s)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: every row runs, figures mean nothing"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark numbers to run (e.g. 1,5)"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    only = {int(x) for x in args.only.split(",") if x}
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    ws = Workspace()
    rows: list[Row] = []
    failed = False
    try:
        for number, (name, bench, labels) in enumerate(BENCHMARKS, start=1):
            if only and number not in only:
                continue
            started = time.perf_counter()
            try:
                rows.extend(bench(ws, sizes))
            except Exception:
                failed = True
                traceback.print_exc()
                rows.extend(
                    Row(label, "ERROR", "-", None, "ERROR", None, "did not run (see stderr)")
                    for label in labels
                )
            print(
                f"[{number}/{len(BENCHMARKS)}] {name}: {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        ws.cleanup()
    print(
        f"OmniQ benchmarks ({mode} mode, {time.perf_counter() - began:.0f} s; "
        f"{os.cpu_count()} CPUs, 1-min load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end)\n"
    )
    print(render(rows))
    return 1 if failed else 0
