"""Soak run (not in CI): producers and workers for minutes on one SQLite file, with a reader
holding a long read transaction; watch the WAL, worker memory and throughput.

``python -m bench.soak [--minutes 5 | --seconds 120] [--workers 2] [--rate 100]``

- ``--producers`` processes enqueue ``--rate`` tasks per second in total
  (``tests.hardening.tasks:soak_work``, ~1 ms of work each).
- ``--workers`` worker processes run them, with the maintenance sweeps every
  2 s (lease recovery, retention of finished tasks/results/events after 30 s,
  and the WAL checkpoint).
- This process opens a raw ``sqlite3`` connection, ``BEGIN``, ``SELECT`` and
  keeps that read transaction open for the first ``--reader-fraction`` of the
  run: no checkpoint can get past its snapshot, so the WAL grows meanwhile.
  Then the reader commits and closes.

Every ``--sample`` seconds it prints the WAL and database sizes, each worker's
RSS (``/proc/<pid>/status`` VmRSS), tasks done and pending. The summary checks:

- after the long reader ends, the WAL stops growing (the checkpoint catches up
  and writers restart the log from its beginning): its largest size after the
  reader's release stays within 10 % of the largest size before it; and it
  shrinks (the next restart of the log truncates the file);
- each worker's RSS at the end is within 20 % of its RSS after warm-up.

Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TASK = "tests.hardening.tasks:soak_work"
APP = "tests.hardening.tasks"
RETENTION = timedelta(seconds=30)
MIB = 1024 * 1024


def _settings() -> object:
    from omniq.models import Settings

    return Settings(
        finished_task_retention=RETENTION,
        event_retention=RETENTION,
        default_result_ttl=RETENTION,
    )


# --- child processes ------------------------------------------------------------------------


async def _serve(url: str, concurrency: int, stats_path: Path) -> None:
    """A worker that also writes its counters to ``stats_path`` every second."""
    from omniq.models import Settings
    from omniq.services import Services
    from omniq.worker import Worker

    settings = _settings()
    assert isinstance(settings, Settings)
    svc = await Services.open_async(url, settings)
    worker = Worker(
        svc.queue,
        svc.results,
        svc.events,
        concurrency=concurrency,
        allow_modules=[APP],
        run_scheduler=False,
        maintenance_interval=2,
    )

    async def report() -> None:
        while True:
            _write_stats(stats_path, worker)
            await asyncio.sleep(1)

    reporter = asyncio.get_running_loop().create_task(report())
    try:
        await worker.run_async(install_signal_handlers=True)
    finally:
        reporter.cancel()
        _write_stats(stats_path, worker)
        await svc.close_async()


def _write_stats(path: Path, worker: Any) -> None:
    """The worker's counters, replaced atomically (the conductor reads them)."""
    stats = worker.get_stats()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"completed": stats.completed, "failed": stats.failed}))
    tmp.replace(path)


async def _produce(url: str, rate: float) -> None:
    """Enqueue ``rate`` tasks per second (batches every 100 ms) until SIGTERM."""
    from omniq.models import Settings
    from omniq.services import Services

    settings = _settings()
    assert isinstance(settings, Settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    svc = await Services.open_async(url, settings)
    try:
        per_tick = rate / 10
        owed = 0.0
        next_tick = loop.time()
        while not stop.is_set():
            owed += per_tick
            n = int(owed)
            owed -= n
            if n:
                await svc.queue.enqueue_many_async(
                    [svc.queue.build_task(TASK, [1.0]) for _ in range(n)]
                )
            next_tick += 0.1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_tick - loop.time()))
    finally:
        await svc.close_async()


# --- the conductor ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass
class Sample:
    t: float
    wal: int
    db: int
    rss: list[int | None]
    done: int
    pending: int
    reader: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    reader_released_at: float | None = None


def pending_count(db: Path) -> int:
    # A short-lived connection: the sampler must not hold a snapshot of its own.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT count(*) FROM omniq_tasks WHERE status = 'pending'").fetchone()
        return int(row[0])
    finally:
        conn.close()


def done_count(stats_files: list[Path]) -> int:
    total = 0
    for path in stats_files:
        try:
            total += int(json.loads(path.read_text())["completed"])
        except (OSError, ValueError, KeyError):
            continue
    return total


def spawn(args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMNIQ_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.soak", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="omniq-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "soak.db"
    wal = workdir / "soak.db-wal"
    url = f"sqlite+aiosqlite:///{db}"

    from omniq.db import migrate

    migrate.upgrade(url)
    logs = [open(workdir / "children.log", "ab")]  # noqa: SIM115
    stats_files = [workdir / f"worker-{i}.json" for i in range(args.workers)]
    workers = [
        spawn(["_worker", url, str(args.concurrency), str(path)], logs[0]) for path in stats_files
    ]
    producers = [
        spawn(["_producer", url, str(args.rate / args.producers)], logs[0])
        for _ in range(args.producers)
    ]
    print(
        f"soak: {duration:g}s, {args.workers} workers x {args.concurrency}, "
        f"{args.producers} producer(s) at {args.rate:g} tasks/s, db {db}"
    )

    reader = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM omniq_tasks").fetchone()  # the snapshot starts here
    reader_open = True
    result = Run()
    started = time.monotonic()
    release_at = started + duration * args.reader_fraction
    header = f"{'t (s)':>6} {'WAL MiB':>8} {'DB MiB':>7} {'reader':>6} " + " ".join(
        f"{'RSS' + str(i) + ' MiB':>9}" for i in range(args.workers)
    )
    print(header + f" {'done':>8} {'pending':>7}")
    try:
        next_sample = started
        while True:
            now = time.monotonic()
            release = reader_open and now >= release_at
            if now >= next_sample or release:  # also just before the release
                sample = Sample(
                    t=now - started,
                    wal=size(wal),
                    db=size(db),
                    rss=[rss_kib(p.pid) for p in workers],
                    done=done_count(stats_files),
                    pending=pending_count(db),
                    reader=reader_open,
                )
                result.samples.append(sample)
                rss = " ".join(
                    f"{(r or 0) / 1024:>9.1f}" if r is not None else f"{'-':>9}" for r in sample.rss
                )
                print(
                    f"{sample.t:>6.0f} {sample.wal / MIB:>8.2f} {sample.db / MIB:>7.2f} "
                    f"{'open' if sample.reader else '-':>6} {rss} {sample.done:>8} "
                    f"{sample.pending:>7}",
                    flush=True,
                )
                if now >= next_sample:
                    next_sample += args.sample
            if release:
                reader.execute("COMMIT")
                reader.close()
                reader_open = False
                result.reader_released_at = now - started
                print(f"{'':>6} -- long reader released at {now - started:.0f}s --")
            if now - started >= duration:
                break
            dead = [p.pid for p in workers + producers if p.poll() is not None]
            if dead:
                print(f"soak: child process(es) {dead} exited early; see {logs[0].name}")
                break
            time.sleep(min(0.2, max(0.0, next_sample - time.monotonic())))
    finally:
        if reader_open:
            reader.execute("COMMIT")
            reader.close()
        stop_all(producers)
        stop_all(workers)
        for log in logs:
            log.close()
    status = summarize(result, workers, args)
    if not (args.dir or args.keep):
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def summarize(result: Run, workers: list[subprocess.Popen[bytes]], args: argparse.Namespace) -> int:
    samples = result.samples
    if len(samples) < 3 or result.reader_released_at is None:
        print("soak: too short to judge (need several samples and the reader's release)")
        return 1
    before = [s for s in samples if s.reader]
    after = [s for s in samples if not s.reader]
    wal_max_before = max(s.wal for s in before)
    wal_max_after = max(s.wal for s in after) if after else 0
    wal_final = samples[-1].wal
    # RSS: the first sample after warm-up (10 % of the run, at least 10 s) vs the last.
    warm = next(
        (s for s in samples if s.t >= max(10.0, 0.1 * samples[-1].t)),
        samples[1],
    )
    last = samples[-1]
    print("\nsummary")
    print(f"  tasks done                 {last.done} ({last.done / max(last.t, 1e-9):,.0f}/s)")
    print(f"  WAL max while reader open  {wal_max_before / MIB:.2f} MiB")
    print(f"  WAL max after release      {wal_max_after / MIB:.2f} MiB")
    print(f"  WAL final                  {wal_final / MIB:.2f} MiB")
    checks: list[tuple[str, bool]] = [
        (
            "WAL bounded after the long reader ends (max after <= 1.1 x max before)",
            wal_max_after <= 1.1 * wal_max_before,
        ),
        (
            "WAL shrank after the long reader ended (final < max, or never above 20 MiB)",
            wal_final < max(wal_max_before, wal_max_after) or wal_max_before <= 20 * MIB,
        ),
        ("every worker survived", all(p.returncode in (0, -signal.SIGTERM) for p in workers)),
    ]
    for i, (first, final) in enumerate(zip(warm.rss, last.rss, strict=True)):
        if first is None or final is None:
            checks.append((f"worker {i} RSS measured", False))
            continue
        ratio = final / first
        print(
            f"  worker {i} RSS              {first / 1024:.1f} MiB at {warm.t:.0f}s -> "
            f"{final / 1024:.1f} MiB at {last.t:.0f}s ({(ratio - 1) * 100:+.1f} %)"
        )
        checks.append((f"worker {i} RSS flat within 20 %", 0.8 <= ratio <= 1.2))
    print()
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    return 0 if all(ok for _, ok in checks) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        asyncio.run(_serve(argv[1], int(argv[2]), Path(argv[3])))
        return 0
    if argv[:1] == ["_producer"]:
        asyncio.run(_produce(argv[1], float(argv[2])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=5.0)
    length.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--producers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks enqueued per second")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--reader-fraction", type=float, default=0.6, help="part of the run the reader is open"
    )
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
