"""``/metrics`` on the dashboard: the database gauges for Prometheus (with the metrics extra)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from omniq.web.backend import Backend

__all__ = ["available", "metrics"]


def available() -> bool:
    """True when prometheus_client can be imported (the route is added only then)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


async def metrics(request: Request) -> Response:
    """The database gauges in Prometheus' text format, read now."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from omniq.metrics import render_gauges

    backend: Backend = request.app.state.backend
    gauges = await backend.overview(lambda reader: reader.gauges_async())
    return Response(render_gauges(gauges), media_type=CONTENT_TYPE_LATEST)
