"""The overview's throughput chart: bar geometry of an inline SVG (no chart library)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from omniq.services.overview import MinuteOutcomes

__all__ = ["Bar", "Chart", "throughput_chart"]

WIDTH = 600
HEIGHT = 120


@attrs.frozen(kw_only=True)
class Bar:
    """One minute: a completed bar stacked on a failed bar (SVG user units)."""

    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    title: str


@attrs.frozen(kw_only=True)
class Chart:
    """The bars, the scale and the totals of the last hour."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    completed: int
    failed: int


def throughput_chart(series: Sequence[MinuteOutcomes]) -> Chart:
    """Stacked bars (failed at the bottom) for each minute of ``series``."""
    peak = max((m.completed + m.failed for m in series), default=0)
    scale = (HEIGHT - 4) / peak if peak else 0.0
    step = WIDTH / max(len(series), 1)
    bars = []
    for i, m in enumerate(series):
        failed_h = m.failed * scale
        completed_h = m.completed * scale
        bars.append(
            Bar(
                x=round(i * step + 1, 2),
                width=round(max(step - 2, 1), 2),
                failed_y=round(HEIGHT - failed_h, 2),
                failed_height=round(failed_h, 2),
                completed_y=round(HEIGHT - failed_h - completed_h, 2),
                completed_height=round(completed_h, 2),
                title=f"{m.minute:%H:%M} UTC: {m.completed} completed, {m.failed} failed",
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        peak=peak,
        completed=sum(m.completed for m in series),
        failed=sum(m.failed for m in series),
    )
