"""``omniq migrate-db`` in a process of its own that stops mid-copy, to be SIGKILLed.

    python tests/migrate_process.py SOURCE TARGET --stop-after N --ready FILE

Runs :func:`omniq.migrate_db.migrate_db` with batches of 100 rows; after
``N`` batches of ``omniq_tasks`` committed, it writes FILE and blocks until
it is killed (a copy interrupted at a known point, the way a crash or an
operator's kill interrupts one).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omniq.migrate_db import Progress, migrate_db  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--stop-after", type=int, required=True)
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()
    batches = 0

    def progress(step: Progress) -> None:
        nonlocal batches
        if step.table != "omniq_tasks" or step.done == 0:
            return
        batches += 1
        if batches >= args.stop_after:
            Path(args.ready).write_text(str(step.done))
            threading.Event().wait()  # until SIGKILL

    migrate_db(args.source, args.target, batch_size=100, force=True, progress=progress)


if __name__ == "__main__":
    main()
