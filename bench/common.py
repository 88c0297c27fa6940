"""Shared helpers: result rows, repetition, process plumbing, memory readings."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One line of the result table."""

    benchmark: str
    omniq: str
    comparison: str
    ratio: float | None
    target: str
    #: True/False against the target; None for reference lines without one.
    passed: bool | None
    note: str


def verdict(ok: bool) -> str:
    """The target column's word for a row with a target."""
    return "PASS" if ok else "MISS"


def ratio_row(
    label: str,
    omniq: float,
    other: float,
    minimum: float,
    target: str,
    note: str,
    *,
    unit: Callable[[float], str] | None = None,
) -> Row:
    """A row whose target is ``omniq / other >= minimum``."""
    unit = unit or fmt_rate
    ratio = omniq / other if other else 0.0
    ok = ratio >= minimum
    return Row(label, unit(omniq), unit(other), ratio, f"{verdict(ok)} {target}", ok, note)


def skipped_row(label: str, reason: str) -> Row:
    """A row that was not measured here, with why (the target column says SKIP)."""
    return Row(label, "skipped", "-", None, "SKIP", None, f"skipped: {reason}")


def rate(n: int, seconds: float) -> float:
    """Items per second (0 when nothing was measured)."""
    return n / seconds if seconds > 0 else 0.0


def fmt_rate(value: float) -> str:
    """``12,345/s``."""
    return f"{value:,.0f}/s"


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sqlite_url(path: Path) -> str:
    """The OmniQ URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark subprocess: ``bench`` importable, no bytecode noise."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class Child:
    """A benchmark subprocess speaking JSON lines on stdout, taking commands on stdin.

    The child prints ``{"event": "ready"}`` once set up, waits for a ``go``
    line, and prints one ``{"event": "done", ...}`` line with its own timings
    (so interpreter start-up is never part of a measurement).
    """

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = list(args)
        # A file, not a pipe: a chatty child can never block on a full stderr pipe.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by kill())
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON message (which must be ``event``); raise if the child died.

        A child that says nothing for ``timeout`` seconds is killed.
        """
        assert self.proc.stdout is not None
        watchdog = threading.Timer(timeout, self.proc.kill)
        watchdog.start()
        try:
            for raw in self.proc.stdout:
                line = raw.strip()
                if not line.startswith("{"):
                    continue
                message: dict[str, Any] = json.loads(line)
                if message.get("event") != event:
                    raise RuntimeError(f"expected {event!r} from child, got {message!r}")
                return message
        finally:
            watchdog.cancel()
        self.proc.wait()
        tail = self.stderr_tail()
        self.kill()
        raise RuntimeError(
            f"benchmark child {' '.join(self.args)} ended without {event!r} "
            f"(exit {self.proc.returncode}):\n{tail}"
        )

    def send(self, line: str) -> None:
        """Write a command line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> None:
        """Close stdin and wait for a clean exit (kill on timeout; raise on failure)."""
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"benchmark child {' '.join(self.args)} did not exit") from None
        if self.proc.returncode != 0:
            raise RuntimeError(
                f"benchmark child {' '.join(self.args)} exited {self.proc.returncode}:\n"
                f"{self.stderr_tail()}"
            )

    def stderr_tail(self, size: int = 4000) -> str:
        """The end of what the child wrote to stderr."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-size:]

    def kill(self) -> None:
        """Stop the child now if it still runs (cleanup path)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()


def emit(message: dict[str, Any]) -> None:
    """Child side: print one JSON message line."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def wait_for_go() -> str:
    """Child side: block until the parent sends a command line."""
    return sys.stdin.readline().strip()
