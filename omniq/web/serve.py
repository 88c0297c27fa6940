"""``omniq dashboard``: the dashboard served on its own by uvicorn (127.0.0.1 by default)."""

from __future__ import annotations

import uvicorn

from omniq.app import AsyncOmniQ
from omniq.web.app import create_app

__all__ = ["serve_async"]


async def serve_async(
    oq: AsyncOmniQ, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info"
) -> None:
    """Open ``oq``, serve its dashboard on ``host:port`` until interrupted, close ``oq``."""
    await oq.open_async()  # an unreachable database fails here, before the server starts
    try:
        config = uvicorn.Config(
            create_app(oq), host=host, port=port, log_level=log_level, lifespan="on"
        )
        await uvicorn.Server(config).serve()
    finally:
        await oq.close_async()
