"""Progress from a task's child process (process executor), sent up the result pipe.

The child keeps the last report and sends it at most every
:data:`SEND_INTERVAL` seconds as a ``("progress", done, total, message)``
message; a report that arrives sooner is sent by a timer thread when the
interval is over, and :meth:`PipeProgress.close` sends the last one before
the function's outcome. The worker coalesces again before writing.
"""

from __future__ import annotations

import multiprocessing.connection
import threading
import time

__all__ = ["SEND_INTERVAL", "PipeProgress"]

#: At most one progress message per this many seconds.
SEND_INTERVAL = 0.1

_Report = tuple[float, float | None, str | None]


class PipeProgress:
    """Sends a child process's progress reports to the worker, throttled."""

    def __init__(
        self, conn: multiprocessing.connection.Connection, interval: float = SEND_INTERVAL
    ) -> None:
        self._pipe = conn
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: _Report | None = None
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    def report(self, done: float, total: float | None, message: str | None) -> None:
        """Send now, or keep as the pending report and send it when the interval is over."""
        with self._lock:
            if self._closed:
                return
            wait = self._last + self._interval - time.monotonic()
            if wait <= 0 and self._timer is None:
                self._send((done, total, message))
                return
            self._pending = (done, total, message)
            if self._timer is None:
                self._timer = threading.Timer(max(wait, 0.0), self._send_pending)
                self._timer.daemon = True
                self._timer.start()

    def _send_pending(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None and not self._closed:
                self._send(self._pending)

    def _send(self, report: _Report) -> None:
        """Send ``report`` (the lock held)."""
        self._pending = None
        self._last = time.monotonic()
        try:
            self._pipe.send(("progress", *report))
        except OSError:  # the worker is gone: the process ends with it
            self._closed = True

    def close(self) -> None:
        """Send the pending report now; later reports are dropped (the outcome comes next)."""
        with self._lock:
            if self._pending is not None and not self._closed:
                self._send(self._pending)
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
