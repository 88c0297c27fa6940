"""A worker in its own OS process, for the multi-process tests.

    python tests/worker_process.py URL --worker-id ID [--burst] [--gate FILE] ...

Runs ``Worker.run_async(install_signal_handlers=True)`` (SIGTERM/SIGINT stop
it gracefully) or, with ``--burst``, ``run_until_complete_async``. With
``--gate``, waits until that file exists before it starts working, so that
several processes start together. Exits 0 after a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omniq.models import Settings  # noqa: E402
from omniq.services import Services  # noqa: E402
from omniq.worker import Worker  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--executor", default="async")
    parser.add_argument("--lease", type=float, default=60.0, help="lease duration, seconds")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat, seconds")
    parser.add_argument("--grace", type=float, default=30.0, help="shutdown grace, seconds")
    parser.add_argument(
        "--maintenance-interval",
        type=float,
        default=None,
        help="run maintenance every this many seconds (default: no maintenance)",
    )
    parser.add_argument("--burst", action="store_true", help="stop when no task is left")
    parser.add_argument("--gate", default=None, help="wait until this file exists")
    parser.add_argument(
        "--allow", action="append", default=[], help="also allow this module's functions"
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        lease_duration=timedelta(seconds=args.lease),
        heartbeat_interval=timedelta(seconds=args.heartbeat),
    )
    services = await Services.open_async(args.url, settings)
    try:
        worker = Worker(
            services.queue,
            services.results,
            services.events,
            worker_id=args.worker_id,
            concurrency=args.concurrency,
            executor=args.executor,
            allow_modules=["tests.worker_tasks", *args.allow],
            poll_interval=0.05,
            grace_period=args.grace,
            run_scheduler=False,
            run_maintenance=args.maintenance_interval is not None,
            maintenance_interval=args.maintenance_interval or 30.0,
        )
        if args.gate:
            gate = Path(args.gate)
            deadline = time.monotonic() + 60
            while not await asyncio.to_thread(gate.exists):
                if time.monotonic() > deadline:
                    raise SystemExit(f"gate {gate} never opened")
                await asyncio.sleep(0.01)
        if args.burst:
            await worker.run_until_complete_async()
        else:
            await worker.run_async(install_signal_handlers=True)
    finally:
        await services.close_async()


if __name__ == "__main__":
    if os.environ.get("OMNIQ_TEST_SPANS"):  # tracing tests: spans go to that file
        from tests.tracing_spans import install

        install()
    asyncio.run(main(parse(sys.argv[1:])))
