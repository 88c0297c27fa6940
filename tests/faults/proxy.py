"""A TCP proxy of our own between OmniQ and PostgreSQL, to inject network faults.

Loopback only, in a daemon thread with its own event loop (it forwards while the
test's loop is busy); bounded: at most ``MAX_CONNECTIONS`` clients, and it closes
everything by itself after ``lifetime`` seconds. Its port lies below the kernel's
ephemeral range, so no outgoing connection can take it while the proxy refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_CONNECTIONS = 200


def _free_port() -> int:
    """A free loopback port below the ephemeral range (else any free one)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", random.randrange(10000, low) if low > 11000 else 0))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free loopback port")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; refuses, drops and resumes on request."""

    def __init__(self, target: tuple[str, int], *, lifetime: float = 300.0) -> None:
        self.target = target
        self.lifetime = lifetime
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._ends: set[asyncio.StreamWriter] = set()  # both ends of every live pipe
        #: Cleared while stalled: bytes are held, connections stay open.
        self._flowing = asyncio.Event()
        #: Ends whose bytes are thrown away (connections a NAT silently forgot).
        self._silenced: set[asyncio.StreamWriter] = set()
        #: The client ends, and whether the server's replies to them are thrown away.
        self._clients: set[asyncio.StreamWriter] = set()
        self._muted = False

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.resume()
        self._call(lambda: self._loop.call_later(self.lifetime, self._shut))
        return self

    def __exit__(self, *_: object) -> None:
        if self._thread.is_alive():
            self._call(self._shut)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def clients(self) -> int:
        """How many client connections are open through the proxy now."""
        return len(self._clients)

    def refuse(self) -> None:
        """Close the listening socket: the kernel refuses new connections (ECONNREFUSED,
        as from a stopped server); live connections keep working."""
        self._call(self._close_listener)

    def drop(self) -> None:
        """Reset every live connection, both sides."""
        self._call(lambda: [_reset(end) for end in list(self._ends)])

    def stall(self) -> None:
        """Pass no more bytes either way; connections stay open and new ones are
        accepted (a server that stops answering, or a link that silently drops)."""
        self._call(self._flowing.clear)

    def silence_live(self) -> None:
        """Throw away every byte of the connections open now, both ways, and keep
        them open; new connections work (what a NAT or load balancer does to an
        idle connection it forgot: no reset, no answer)."""
        self._call(lambda: self._silenced.update(self._ends))

    def drop_replies(self) -> None:
        """Pass requests on and throw the server's replies away, on every connection,
        until :meth:`resume` (a link that loses packets one way)."""

        def mute() -> None:
            self._muted = True

        self._call(mute)

    def resume(self) -> None:
        """Listen again on the same port, and pass bytes again (replies too)."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

        def unmute() -> None:
            self._muted = False

        self._call(unmute)
        self._call(self._flowing.set)

    def _call(self, fn: Callable[[], Any]) -> None:
        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # --- in the proxy's loop ------------------------------------------------------------

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()  # the listening socket only
            self._server = None

    def _shut(self) -> None:
        self._close_listener()
        for end in list(self._ends):
            _reset(end)

    async def _listen(self) -> None:
        if self._server is None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self._server = await asyncio.start_server(self._handle, sock=sock)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._ends) >= 2 * MAX_CONNECTIONS:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, TimeoutError):
            _reset(writer)
            return
        self._ends |= {writer, up_writer}
        self._clients.add(writer)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._ends -= {writer, up_writer}
            self._clients.discard(writer)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(1 << 16):
                await self._flowing.wait()
                if dst in self._silenced or (self._muted and dst in self._clients):
                    continue
                dst.write(data)
                await dst.drain()
        except OSError:
            _reset(dst)
        else:
            dst.close()  # EOF: pass the FIN on
