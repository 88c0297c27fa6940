"""Serving ``/metrics`` over HTTP: for a worker process, for ``omniq metrics``, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server

from omniq.errors import ConfigurationError
from omniq.metrics._database import DatabaseCollector
from omniq.metrics._worker import WorkerMetrics
from omniq.services import Services

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ
    from omniq.sync import OmniQ

__all__ = ["MetricsServer", "serve_async", "start_metrics_server"]

log = logging.getLogger("omniq.metrics")


class MetricsServer:
    """An HTTP server answering Prometheus' scrapes (in a daemon thread); see
    :func:`start_metrics_server`. Close it with :meth:`close` (or ``with``)."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str) -> None:
        #: The registry it serves: add collectors of your own with ``registry.register``.
        self.registry = registry
        try:
            self._httpd, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {exc}") from None
        #: The port it listens on (the one chosen by the system when asked for port 0).
        self.port: int = self._httpd.server_port
        self.addr = addr
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """The address to scrape, ``http://addr:port/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop answering and free the port; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start_metrics_server(
    source: AsyncOmniQ | OmniQ | Services | None,
    *,
    port: int = 9100,
    addr: str = "127.0.0.1",
    worker: WorkerMetrics | None = None,
) -> MetricsServer:
    """Serve Prometheus metrics on ``http://addr:port/metrics`` from a daemon thread.

    It serves the database gauges of ``source`` (an app or its services; each
    scrape reads the tables on the loop that owns its connections; ``None``:
    no database gauges) and, with ``worker``, that :class:`WorkerMetrics`'s
    per-process counters and histograms. Returns at once (no need to await;
    callable from sync and async code). ``port=0`` picks a free port
    (:attr:`MetricsServer.port`). Binds 127.0.0.1 unless ``addr`` says otherwise.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"metrics port must be an integer 0-65535, got {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    if source is not None:
        registry.register(DatabaseCollector(source))
    if worker is not None:
        registry.register(worker)
    return MetricsServer(registry, port, addr)


async def serve_async(
    oq: AsyncOmniQ,
    *,
    port: int = 9100,
    addr: str = "127.0.0.1",
    ready: Callable[[str], None] | None = None,
) -> None:
    """``omniq metrics``: open ``oq``, serve its database gauges until SIGTERM/SIGINT, close.

    ``ready`` is called with the URL to scrape once the server listens.
    """
    await oq.open_async()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        with start_metrics_server(oq, port=port, addr=addr) as server:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
                    handled.append(sig)
            log.info("serving the database gauges on %s", server.url)
            if ready is not None:
                ready(server.url)
            await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await oq.close_async()
