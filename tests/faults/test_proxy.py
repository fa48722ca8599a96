"""The fault proxy itself, against a plain echo server (no broker, relay or daemon)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.proxy import FaultProxy
from tests.harness.ports import LOOPBACK


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = True


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer((LOOPBACK, 0), _Echo)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="echo", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(LOOPBACK, echo.server_address[1], name="echo") as running:
        yield running


def _connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return out


def test_pass_forwards_both_ways_and_counts_connections(proxy: FaultProxy) -> None:
    """In pass mode bytes go through unchanged and every connection is counted."""
    for _ in range(2):
        with _connect(proxy) as sock:
            sock.sendall(b"hello" * 1000)
            assert _recv_exactly(sock, 5000) == b"hello" * 1000
    assert proxy.connections == 2


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    """latency(s) delays each direction by s: a round trip takes about 2 s."""
    proxy.latency(0.15)
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 2.0
    proxy.pass_()
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - started < 0.2


def test_blackhole_holds_bytes_and_pass_releases_them(proxy: FaultProxy) -> None:
    """A blackhole forwards nothing but keeps the connection; after pass the stream resumes."""
    with _connect(proxy) as sock:
        sock.sendall(b"a")
        assert _recv_exactly(sock, 1) == b"a"
        proxy.blackhole()
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        with _connect(proxy) as late:  # a new connection is accepted, nothing flows
            late.settimeout(0.3)
            late.sendall(b"x")
            with pytest.raises(TimeoutError):
                late.recv(10)
        proxy.pass_()
        sock.settimeout(5)
        assert _recv_exactly(sock, 4) == b"held"


def test_reset_aborts_live_and_new_connections(proxy: FaultProxy) -> None:
    """reset() sends RST on live connections and on new ones until the mode changes."""
    with _connect(proxy) as sock:
        sock.sendall(b"a")
        assert _recv_exactly(sock, 1) == b"a"
        proxy.reset()
        with pytest.raises(ConnectionError):
            sock.sendall(b"b")
            sock.recv(10)
    # The RST may already fail the connect() itself, or the first send or receive.
    with pytest.raises(ConnectionError), _connect(proxy) as sock:
        time.sleep(0.1)
        sock.sendall(b"c")
        sock.recv(10)
    proxy.pass_()
    with _connect(proxy) as sock:
        sock.sendall(b"ok")
        assert _recv_exactly(sock, 2) == b"ok"
    assert proxy.resets >= 2


def test_cut_after_forwards_n_bytes_then_resets_once(proxy: FaultProxy) -> None:
    """cut_after(n) lets n more client bytes through, then aborts that connection; then pass."""
    with _connect(proxy) as sock:
        proxy.cut_after(10)
        sock.sendall(b"0123456789abcdef")
        got = b""
        with pytest.raises(ConnectionResetError):
            while data := sock.recv(100):
                got += data
        assert got in (b"", b"0123456789"[: len(got)]) and len(got) <= 10
    assert proxy.cuts == 1 and proxy.mode == "pass"
    with _connect(proxy) as sock:
        sock.sendall(b"0123456789abcdef")
        assert _recv_exactly(sock, 16) == b"0123456789abcdef"


def test_target_down_looks_like_a_failed_connection() -> None:
    """With nothing listening behind it the proxy accepts, then resets the connection."""
    with socket.socket() as placeholder:
        placeholder.bind((LOOPBACK, 0))
        port = placeholder.getsockname()[1]
    # The RST may already fail the connect() itself, or the first send or receive.
    with (
        FaultProxy(LOOPBACK, port) as proxy,
        pytest.raises(ConnectionError),
        _connect(proxy) as sock,
    ):
        sock.sendall(b"x")
        sock.recv(10)
