"""``omniq dashboard``: the dashboard served on its own by uvicorn (127.0.0.1 by default)."""

from __future__ import annotations

import socket

import uvicorn

from omniq.app import AsyncOmniQ
from omniq.errors import ConfigurationError
from omniq.web.app import create_app

__all__ = ["serve_async"]


async def serve_async(
    oq: AsyncOmniQ, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info"
) -> None:
    """Open ``oq``, serve its dashboard on ``host:port`` until interrupted, close ``oq``."""
    # The address first: a port in use (or an address not this machine's) is one
    # clear error, not uvicorn's log lines and exit; uvicorn then binds it itself.
    try:
        socket.create_server((host, port)).close()
    except (OSError, OverflowError) as exc:
        raise ConfigurationError(f"the dashboard cannot listen on {host}:{port}: {exc}") from None
    await oq.open_async()  # an unreachable database fails here, before the server starts
    try:
        config = uvicorn.Config(
            create_app(oq), host=host, port=port, log_level=log_level, lifespan="on"
        )
        await uvicorn.Server(config).serve()
    finally:
        await oq.close_async()
