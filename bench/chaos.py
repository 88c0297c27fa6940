"""Chaos run: kill -9 worker processes while they drain a SQLite queue; check at-least-once.

``python -m bench.chaos [--tasks 2000] [--kills 15] [--workers 3] [--concurrency 1]``

A fresh SQLite file gets ``--tasks`` tasks (``tests.hardening.tasks:chaos_work``)
that each append ``"<n> <pid>"`` to a side file as they start and then work
5-20 ms. ``--workers`` worker processes drain it; every 0.5-1 s one of them,
chosen at random, is killed with SIGKILL and restarted, until ``--kills``
kills were done (or the work ran out). Then the workers drain what is left
(bounded by ``--deadline``) and are stopped.

Workers run with a 2 s lease and a 0.5 s heartbeat, and every worker sweeps
for lost leases every 0.5 s (its maintenance interval), so a killed worker's
tasks are back in the queue within seconds. ``--cli`` runs ``python -m omniq
worker`` instead of this module's driver; its maintenance interval is the
default 30 s (no option for it), so expect a slower drain.

Invariants checked (exit status 1 if one fails):

- no task is left pending or running, and every task completed;
- every task ran at least once (the side file);
- no task ran more than ``1 + kills`` times (each kill can interrupt a task once).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TASK = "tests.hardening.tasks:chaos_work"
APP = "tests.hardening.tasks"
LEASE = timedelta(seconds=2)
HEARTBEAT = timedelta(milliseconds=500)


# --- the worker driver (a child process) ---------------------------------------------------------


async def _serve(url: str, concurrency: int) -> None:
    from omniq.models import Settings
    from omniq.services import Services
    from omniq.worker import Worker

    settings = Settings(lease_duration=LEASE, heartbeat_interval=HEARTBEAT)
    svc = await Services.open_async(url, settings)
    try:
        worker = Worker(
            svc.queue,
            svc.results,
            svc.events,
            concurrency=concurrency,
            allow_modules=[APP],
            run_scheduler=False,
            maintenance_interval=0.5,
            grace_period=5,
        )
        await worker.run_async(install_signal_handlers=True)
    finally:
        await svc.close_async()


# --- the conductor ---------------------------------------------------------------------------


class Workers:
    """The worker processes: start, kill -9, restart, stop."""

    def __init__(self, url: str, workdir: Path, concurrency: int, cli: bool) -> None:
        self.url = url
        self.workdir = workdir
        self.concurrency = concurrency
        self.cli = cli
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.started = 0

    def _command(self) -> list[str]:
        if self.cli:
            return [
                sys.executable,
                "-m",
                "omniq",
                "worker",
                "--app",
                APP,
                "--lease-duration",
                "2s",
                "--heartbeat-interval",
                "0.5s",
                "--concurrency",
                str(self.concurrency),
                "--no-scheduler",
            ]
        return [sys.executable, "-m", "bench.chaos", "_worker", self.url, str(self.concurrency)]

    def spawn(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.workdir / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        env = {
            **os.environ,
            "OMNIQ_DATABASE_URL": self.url,
            "PYTHONPATH": str(REPO_ROOT),
            "OMNIQ_LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            self._command(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def kill_one(self, rng: random.Random) -> int:
        """SIGKILL a random live worker, reap it, start a replacement; return its pid."""
        live = [p for p in self.procs if p.poll() is None]
        victim = rng.choice(live)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.procs.remove(victim)
        self.spawn()
        return victim.pid

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()

    def crashed(self) -> list[int]:
        """Pids of workers that exited on their own (not killed by us)."""
        return [p.pid for p in self.procs if p.poll() is not None]


def status_counts(db: Path) -> dict[str, int]:
    """Task counts per status, read with a plain sqlite3 connection."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT status, count(*) FROM omniq_tasks GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


def result_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT status, count(*) FROM omniq_results GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


async def enqueue(url: str, runs: Path, tasks: int, max_retries: int, seed: int) -> None:
    from omniq.models import Settings
    from omniq.services import Services

    rng = random.Random(seed)
    svc = await Services.open_async(url, Settings(lease_duration=LEASE))
    try:
        batch = [
            svc.queue.build_task(
                TASK,
                [str(runs), n, rng.uniform(5, 20)],
                max_retries=max_retries,
                retry_delay=0.05,
            )
            for n in range(tasks)
        ]
        for i in range(0, tasks, 500):
            await svc.queue.enqueue_many_async(batch[i : i + 500])
    finally:
        await svc.close_async()


def read_runs(runs: Path) -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    if runs.exists():
        for line in runs.read_text().splitlines():
            if line.strip():
                counts[int(line.split()[0])] += 1
    return counts


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="omniq-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "chaos.db"
    runs = workdir / "runs.log"
    url = f"sqlite+aiosqlite:///{db}"
    started = time.monotonic()
    asyncio.run(enqueue(url, runs, args.tasks, max_retries=args.kills + 1, seed=args.seed))
    print(f"chaos: {args.tasks} tasks in {db}; {args.workers} workers x {args.concurrency} slots")

    workers = Workers(url, workdir, args.concurrency, args.cli)
    for _ in range(args.workers):
        workers.spawn()
    kills = 0
    killed_pids: list[int] = []
    try:
        while kills < args.kills:
            time.sleep(rng.uniform(0.5, 1.0))  # the chaos schedule, not a wait for a condition
            counts = status_counts(db)
            if counts.get("pending", 0) + counts.get("running", 0) == 0:
                break  # the work ran out before the kills did
            killed_pids.append(workers.kill_one(rng))
            kills += 1
        kill_phase = time.monotonic() - started
        deadline = time.monotonic() + args.deadline
        while True:
            counts = status_counts(db)
            if counts.get("pending", 0) + counts.get("running", 0) == 0:
                break
            if time.monotonic() > deadline:
                print(f"chaos: drain deadline ({args.deadline:g}s) passed: {counts}")
                break
            time.sleep(0.2)
        crashed = workers.crashed()
    finally:
        workers.stop()
    elapsed = time.monotonic() - started

    counts = status_counts(db)
    results = result_counts(db)
    executions = read_runs(runs)
    histogram = collections.Counter(executions.get(n, 0) for n in range(args.tasks))
    most = max(histogram) if histogram else 0
    unknown = set(executions) - set(range(args.tasks))

    print()
    print(
        table(
            [
                ("tasks", str(args.tasks)),
                ("kills (SIGKILL)", f"{kills} (asked {args.kills})"),
                ("worker processes started", str(workers.started)),
                ("workers that died on their own", str(len(crashed))),
                *(
                    (f"tasks {status}", str(counts.get(status, 0)))
                    for status in ("completed", "failed", "running", "pending")
                ),
                *((f"results {k}", str(v)) for k, v in sorted(results.items())),
                ("executions recorded", str(sum(executions.values()))),
                ("max executions of one task", str(most)),
                ("kill phase / total time", f"{kill_phase:.1f} s / {elapsed:.1f} s"),
            ]
        )
    )
    print("\n  executions per task   tasks")
    for n in sorted(histogram):
        print(f"  {n:>19}   {histogram[n]}")

    checks = [
        ("no task running or pending", counts.get("running", 0) + counts.get("pending", 0) == 0),
        ("every task completed", counts.get("completed", 0) == args.tasks),
        ("every task ran at least once", histogram.get(0, 0) == 0),
        (f"no task ran more than 1 + kills = {1 + kills} times", most <= 1 + kills),
        ("no execution of an unknown task", not unknown),
        ("no worker died on its own", not crashed),
    ]
    print()
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    failed = [name for name, ok in checks if not ok]
    if failed:
        print(f"\nchaos: FAILED ({len(failed)} invariant(s)); logs in {workdir}")
        return 1
    if args.dir or args.keep:
        print(f"\nchaos: all invariants hold (files in {workdir})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        print("\nchaos: all invariants hold")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        asyncio.run(_serve(argv[1], int(argv[2])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    parser.add_argument("--deadline", type=float, default=120.0, help="drain deadline (s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--cli", action="store_true", help="run `python -m omniq worker`")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    print(f"chaos: seed {args.seed}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
