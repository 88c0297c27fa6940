"""Freezing a worker process's start-up heap out of the cyclic garbage collector's walk.

Everything alive when a worker starts (SQLAlchemy's and the app's imported
modules, the schema, compiled statements) lives as long as the process, yet
every full collection walks all of it again: in a worker that claims and
settles thousands of tasks a second (each a handful of short-lived
containers), full collections came every few hundred milliseconds and took
tens of milliseconds each, about a tenth of the worker's time, for nothing
to reclaim. ``gc.freeze()`` moves those objects to the permanent generation,
which collections skip; what the worker allocates afterwards is collected as
before, and reference counting still frees any frozen object that is
dropped (only a reference cycle among frozen objects would now stay).

The same call raises the youngest generation's threshold to
:data:`YOUNG_THRESHOLD` (``gc.set_threshold``; a higher one of yours is
kept). CPython's default, 700, counts container objects allocated and not
yet freed; a claim of 150 tasks allocates a few thousand that live until
those tasks finish, so a young collection ran every few dozen tasks and
walked the batch in flight each time, promoting it to be walked again by
the older generations: about 7 % of a burning-down worker's CPU. With
10,000 most of those objects are freed by reference counting before a
collection comes; cyclic garbage still goes within 10,000 allocations.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["YOUNG_THRESHOLD", "freeze_startup_heap"]

#: The youngest generation's threshold a worker process sets (CPython's default: 700).
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_frozen = False


def freeze_startup_heap() -> bool:
    """Collect garbage once, then freeze what is alive (``gc.freeze``) and raise the
    youngest generation's threshold to :data:`YOUNG_THRESHOLD`; once per process.

    True if this call froze the heap; False if it was frozen before (by an
    earlier worker of this process, or by its parent before a fork).
    """
    global _frozen
    with _lock:
        if _frozen:
            return False
        _frozen = True
    # Collect first: garbage alive now would otherwise be kept for good.
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:  # 0: collection turned off by the app; kept so
        gc.set_threshold(YOUNG_THRESHOLD, *older)
    return True
