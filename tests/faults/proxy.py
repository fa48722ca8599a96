"""A TCP fault proxy on 127.0.0.1 for the fault-injection tests, in front of broker or relay.

The proxy runs an asyncio loop in its own thread and forwards every accepted connection to one
target. Its mode can change at any time from any thread; each setter returns once the new mode
is in force (live connections included):

- `pass_()`: forward everything (the default);
- `latency(seconds)`: delay every chunk by that many seconds, in each direction (one-way delay,
  so a round trip costs twice that); order and throughput are kept;
- `blackhole()`: keep every connection open and forward nothing, not even a close. Bytes are
  held, as a TCP stack retransmits them, and flow again after `pass_()` unless an endpoint gave
  up meanwhile (a connection whose client gave up before it ever reached the target is dropped,
  as a connection whose SYN was lost never existed for the target);
- `reset()`: abort every live connection with a TCP RST, and every new one while in this mode;
- `cut_after(n, direction)`: forward the next n bytes in that direction (counted from this
  call, across connections), then abort that connection with RST on both sides, then pass
  again (after `count` cuts).

`connections` counts the client connections accepted so far, `active` the ones still open,
`forwarded(direction)` the bytes passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tests.harness.ports import LOOPBACK

Direction = Literal["client_to_server", "server_to_client"]
DIRECTIONS: tuple[Direction, ...] = ("client_to_server", "server_to_client")
T = TypeVar("T")

_CHUNK = 65536


# What a reader queues for its writer: (due time, bytes), EOF (a FIN) or a reset (an RST).
_EOF = None
_RESET = b""


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN, dropping unsent bytes."""
    if writer is None:
        return
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass
class _Cut:
    direction: Direction
    size: int
    remaining: int
    count: int


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    aborted: bool = False
    client_gone: bool = False

    def abort(self) -> None:
        self.aborted = True
        _rst(self.client)
        _rst(self.server)


class FaultProxy:
    """A TCP proxy from 127.0.0.1:`port` to target_host:target_port with switchable faults."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.host = LOOPBACK
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._accepted = 0
        self._cuts_done = 0
        self._resets_done = 0
        self._mode = "pass"
        self._latency = 0.0
        self._cut: _Cut | None = None
        self._open: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._gate: asyncio.Event | None = None  # set: forwarding allowed (not blackholed)
        self._forwarded = dict.fromkeys(DIRECTIONS, 0)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"fault-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(5)
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening, abort every connection, end the thread and close its loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown(), timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._loop = None
            self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            conn.abort()
        if self._gate is not None:
            self._gate.set()  # release anything waiting in a blackhole
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let the aborted transports run connection_lost before the loop goes.
        await asyncio.sleep(0)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the proxy's loop and wait for it (thread-safe)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- modes (any thread) --------------------------------------------------------------------

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def pass_(self) -> None:
        """Forward everything without delay (ends latency, blackhole, reset and a pending cut)."""
        self._call(self._set(mode="pass", latency=0.0, cut=None))

    def latency(self, seconds: float) -> None:
        """Delay each chunk by seconds in each direction (live connections too)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._call(self._set(mode="pass", latency=seconds, cut=None))

    def blackhole(self) -> None:
        """Forward nothing (not even a close) until the next mode change; connections stay."""
        self._call(self._set(mode="blackhole", latency=0.0, cut=None))

    def reset(self) -> None:
        """Abort every live connection with RST, and every new one until the next mode change."""
        self._call(self._set(mode="reset", latency=0.0, cut=None))

    def cut_after(
        self, n_bytes: int, direction: Direction = "client_to_server", *, count: int = 1
    ) -> None:
        """Forward n_bytes more in direction, then RST that connection; count times, then pass."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        if n_bytes < 0 or count < 1:
            raise ValueError("n_bytes must be >= 0 and count >= 1")
        cut = _Cut(direction, n_bytes, n_bytes, count)
        self._call(self._set(mode="cut", latency=0.0, cut=cut))

    async def _set(self, *, mode: str, latency: float, cut: _Cut | None) -> None:
        assert self._gate is not None
        with self._lock:
            self._mode = mode
            self._latency = latency
            self._cut = cut
        if mode == "blackhole":
            self._gate.clear()
        else:
            self._gate.set()
        if mode == "reset":
            for conn in list(self._open):
                conn.abort()
                with self._lock:
                    self._resets_done += 1
            await asyncio.sleep(0)

    # -- inspection ----------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._accepted

    @property
    def active(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._open)

    def forwarded(self, direction: Direction = "client_to_server") -> int:
        """Bytes forwarded in direction so far, over all connections."""
        with self._lock:
            return self._forwarded[direction]

    @property
    def cuts(self) -> int:
        """Connections aborted by `cut_after`."""
        with self._lock:
            return self._cuts_done

    @property
    def resets(self) -> int:
        """Connections aborted by `reset` (live ones and refused new ones)."""
        with self._lock:
            return self._resets_done

    # -- the loop's side -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Connection(client=writer)
        with self._lock:
            self._accepted += 1
            refuse = self._mode == "reset"
            if refuse:
                self._resets_done += 1
            else:
                self._open.add(conn)
        try:
            if refuse:
                conn.abort()
                return
            await self._serve(conn, reader)
        except asyncio.CancelledError:
            conn.abort()
        finally:
            for pump in conn.tasks:
                pump.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            for side in (conn.client, conn.server):
                if side is not None and not side.transport.is_closing():
                    side.transport.close()
            with self._lock:
                self._open.discard(conn)
            self._handlers.discard(task)

    async def _serve(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        assert self._gate is not None
        to_server: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        to_client: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        conn.tasks.append(asyncio.create_task(self._read(client_reader, to_server, conn, True)))
        # A connection made during a blackhole reaches the target only once the path is back,
        # and not at all if its client gave up meanwhile (for the target it never existed).
        await self._gate.wait()
        if conn.aborted or conn.client_gone:
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            conn.abort()  # the target is down: the client sees its connection fail
            return
        conn.server = server_writer
        if conn.aborted:  # reset() while we were connecting
            conn.abort()
            return
        conn.tasks += [
            asyncio.create_task(self._read(server_reader, to_client, conn, False)),
            asyncio.create_task(self._write(to_server, server_writer, conn, DIRECTIONS[0])),
            asyncio.create_task(self._write(to_client, conn.client, conn, DIRECTIONS[1])),
        ]
        # Done when both directions have passed their EOF on, or the connection was aborted.
        await asyncio.gather(*conn.tasks[2:], return_exceptions=True)

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        conn: _Connection,
        from_client: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        end: bytes | None = _EOF
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                with self._lock:
                    delay = self._latency
                queue.put_nowait((loop.time() + delay, data))
        except OSError:
            end = _RESET
        finally:
            if from_client:
                conn.client_gone = True
            with self._lock:
                delay = self._latency
            queue.put_nowait((loop.time() + delay, end))

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        writer: asyncio.StreamWriter,
        conn: _Connection,
        direction: Direction,
    ) -> None:
        assert self._gate is not None
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._gate.wait()
            if conn.aborted:
                return
            if data is _EOF:
                # Half-close: pass the FIN on; the other direction may still carry data.
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                return
            if data == _RESET:
                conn.abort()
                return
            data, cut_now = self._apply_cut(direction, data)
            try:
                if data:
                    with self._lock:
                        self._forwarded[direction] += len(data)
                    writer.write(data)
                    await writer.drain()
            except OSError:
                conn.abort()
                return
            if cut_now:
                conn.abort()
                return

    def _apply_cut(self, direction: Direction, data: bytes) -> tuple[bytes, bool]:
        """The part of data to forward, and whether to abort the connection after it."""
        with self._lock:
            cut = self._cut
            if cut is None or cut.direction != direction:
                return data, False
            if len(data) < cut.remaining:
                cut.remaining -= len(data)
                return data, False
            head = data[: cut.remaining]
            self._cuts_done += 1
            cut.count -= 1
            if cut.count > 0:
                cut.remaining = cut.size
            else:
                self._cut = None
                self._mode = "pass"
            return head, True
