"""How ``omniq task ID`` shows a task's progress (text and JSON)."""

from __future__ import annotations

from typing import Any

from omniq.cli_output import plain
from omniq.models import TaskProgress

__all__ = ["bar", "progress_data", "progress_text", "with_progress"]

_BAR = 20


def _number(value: float) -> str:
    return f"{value:g}"


def bar(fraction: float) -> str:
    """``[#########...........] 45%``: a bar of ``fraction`` (0 to 1) and its percentage."""
    filled = round(fraction * _BAR)
    return f"[{'#' * filled}{'.' * (_BAR - filled)}] {fraction * 100:.0f}%"


def progress_text(progress: TaskProgress) -> str:
    """One line: a bar and percentage (with a total), the counts, the message and when."""
    parts = []
    fraction = progress.fraction
    if fraction is not None:
        parts.append(bar(fraction))
        parts.append(f"({_number(progress.done)} of {_number(progress.total or 0)})")
    else:
        parts.append(f"{_number(progress.done)} done")
    if progress.message:
        parts.append(progress.message)
    parts.append(f"(attempt {progress.attempt}, at {progress.updated_at.isoformat()})")
    return " ".join(parts)


def with_progress(text: str, progress: TaskProgress | None) -> str:
    """``text`` (a task's record) with a ``progress`` section when the task reported any."""
    if progress is None:
        return text
    return f"{text}\n\nprogress: {progress_text(progress)}"


def progress_data(progress: TaskProgress | None) -> dict[str, Any] | None:
    """The JSON form of ``progress`` (with ``percent``), or None."""
    if progress is None:
        return None
    return {**plain(progress), "percent": progress.percent}
