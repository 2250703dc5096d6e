"""A TCP proxy that injects network faults between a client and a (loopback) server.

The proxy runs its own asyncio loop in a daemon thread, so sync tests, async tests and the demo can
all drive it with plain method calls. Faults: cut every open connection (RST), add one-way latency,
blackhole (hold all traffic, like a partition), refuse new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

_T = TypeVar("_T")

_CHUNK = 64 * 1024
# Chunks in flight per direction: bounds memory, yet with 64 KiB chunks allows far more than a
# test's bandwidth-delay product, so a delay does not cap throughput.
_QUEUE_CHUNKS = 1024
_CALL_TIMEOUT = 10.0


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: the peer sees a reset, as when a link or a middlebox drops it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.sent = 0  # bytes delivered from the client to the target

    def abort(self) -> None:
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)


class FaultProxy:
    """Forward 127.0.0.1:<free port> to `host:port` (a loopback address), with injectable faults.

    Starts on construction; close() (or leaving the `with` block) stops it.
    """

    def __init__(self, host: str, port: int, *, listen_host: str = "127.0.0.1") -> None:
        if not _is_loopback(host):
            raise ValueError(f"FaultProxy only forwards to loopback addresses, not {host!r}")
        if not _is_loopback(listen_host):
            raise ValueError(f"FaultProxy only listens on loopback addresses, not {listen_host!r}")
        self.target_host = host
        self.target_port = port
        self.listen_host = listen_host
        self._delay = 0.0
        self._refuse = False
        self._bytes = 0
        self._conns: set[_Connection] = set()
        self._accepted: list[_Connection] = []  # every connection so far, in the order accepted
        self._cut_at: tuple[int, int] | None = None  # (connection index, bytes): see cut_when_sent
        self.cut_done = threading.Event()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="FaultProxy", daemon=True)
        self._thread.start()
        try:
            self._flowing: asyncio.Event = self._call(self._make_event())
            self._server: asyncio.Server = self._call(self._listen())
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._thread.name = f"FaultProxy-{self.port}->{port}"

    @classmethod
    def to(cls, endpoint: str) -> FaultProxy:
        """A proxy in front of "host:port", "http://host:port" or "https://host:port"."""
        parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"not a host:port endpoint: {endpoint!r}")
        return cls(parts.hostname, parts.port)

    # -- public, thread-safe ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT": where clients connect instead of the target."""
        return f"{self.listen_host}:{self.port}"

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.address}"

    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered so far, both directions together."""
        return self._bytes

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._conns)

    @property
    def sent_per_connection(self) -> list[int]:
        """Bytes delivered from the client to the target on each connection accepted so far, in the
        order they were accepted (closed ones included)."""
        return [c.sent for c in self._accepted]

    def cut_when_sent(self, index: int, nbytes: int) -> None:
        """Reset the `index`-th connection accepted when it is about to deliver its `nbytes`-th byte to
        the target (the chunk that would reach it is dropped, as on a link that fails mid-request);
        `cut_done` is set then. Once."""
        self.cut_done.clear()
        self._cut_at = (index, nbytes)

    @property
    def delay(self) -> float:
        return self._delay

    def set_delay(self, seconds: float) -> None:
        """Add `seconds` of one-way latency in each direction (0.015 gives a 30 ms round trip).

        Applies to data read from now on; order is kept and throughput is not serialized.
        """
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)

    def set_blackhole(self, on: bool) -> None:
        """Hold all traffic (connections stay open, nothing is delivered) until turned off.

        Like a partition that heals: what was sent meanwhile is delivered afterwards, in order, as
        TCP retransmission would.
        """
        self._call(self._set_flowing(not on))

    def set_refuse(self, on: bool) -> None:
        """Reset new connections as soon as they are accepted; open ones are left alone."""
        self._refuse = on

    def cut(self) -> int:
        """Reset every open connection (both sides see RST); returns how many were cut.

        New connections are accepted as usual.
        """
        return self._call(self._cut())

    def close(self) -> None:
        """Stop listening, reset every connection and end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy({self.address} -> {self.target_host}:{self.target_port})"

    # -- loop side --------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("FaultProxy methods must not be called from the proxy's own thread")
        fut: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=_CALL_TIMEOUT)

    def _stop_loop(self) -> None:
        stop: Callable[[], None] = self._loop.stop
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=_CALL_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    async def _make_event(self) -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, self.listen_host, 0)

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _cut(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        return len(conns)

    def _cut_due(self, conn: _Connection, more: int) -> bool:
        if self._cut_at is None:
            return False
        index, nbytes = self._cut_at
        if index >= len(self._accepted) or self._accepted[index] is not conn or conn.sent + more < nbytes:
            return False
        self._cut_at = None
        return True

    async def _shutdown(self) -> None:
        self._server.close()
        await self._cut()
        self._flowing.set()  # release pipes held by a blackhole so they see the reset and end
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            _abort(writer)
            return
        conn = _Connection(writer)
        self._conns.add(conn)
        self._accepted.append(conn)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                # Target down: the client sees its connection reset, as it would through a real hop.
                _abort(writer)
                return
            conn.upstream = up_writer
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer, conn)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            try:
                done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    conn.abort()  # a reset on one side is passed on to the other as a reset
            finally:
                for task in pipes:
                    task.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                for w in (writer, up_writer):
                    w.close()
        finally:
            self._conns.discard(conn)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: _Connection | None = None
    ) -> None:
        # Reader and writer run apart, joined by a queue of (due time, chunk): each chunk waits out
        # its own delay while later chunks are already being read, so latency adds up once, not per
        # chunk, and order is kept.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                await self._flowing.wait()
                data = await src.read(_CHUNK)
                await queue.put((loop.time() + self._delay, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()  # pass a half-close on
                    return
                if upward is not None and self._cut_due(upward, len(data)):
                    upward.abort()
                    self.cut_done.set()
                    return
                dst.write(data)
                await dst.drain()
                self._bytes += len(data)
                if upward is not None:
                    upward.sent += len(data)

        # A reset on the reading side raises out of gather at once; the caller then resets both.
        await asyncio.gather(read(), write())
