"""A tiny authoritative DNS server on 127.0.0.1 (dnspython), answering over UDP and TCP.

It serves only the records it is given (TXT and whatever else `add` is told), answers
NXDOMAIN for names it does not know and NOERROR with an empty answer for a known name asked
for another type. Records may change while it runs. With ``truncate_udp=True`` every UDP
answer comes back truncated (TC set, no records), so a resolver has to retry over TCP:
that proves the TCP side works.

    with DnsServer() as dns_server:
        dns_server.txt("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=MIIB...")
        resolver: "127.0.0.1", port: dns_server.port

Without a server: `CannedLookups` answers the doctor's DNS checks (its `Lookups` protocol) from
dictionaries, and `dkim_txt_lookup` answers dkimpy's `dnsfunc` the same way.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from agent.doctor.resolver import IPAddress, LookupFailed
from tests.harness._service import Service
from tests.harness.ports import LOOPBACK, free_port

# RFC 1035 4.2.1: without EDNS a UDP answer holds at most 512 bytes.
_UDP_PLAIN_MAX = 512
_TTL = 60


@dataclass(frozen=True)
class Query:
    """One question the server answered: name (no trailing dot), type name and transport."""

    name: str
    rdtype: str
    transport: str


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 octets (RFC 1035 3.3.14)."""
    data = value.encode()
    return [data[i : i + 255].decode() for i in range(0, len(data), 255)] or [""]


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class DnsServer(Service):
    """Authoritative answers for the records added, on one loopback port for UDP and TCP."""

    def __init__(self, *, port: int | None = None, truncate_udp: bool = False) -> None:
        self.host = LOOPBACK
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.truncate_udp = truncate_udp
        self._lock = threading.Lock()
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[str]] = {}
        self._queries: list[Query] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- records -------------------------------------------------------------------------------

    @staticmethod
    def _key(name: str, rdtype: str) -> tuple[dns.name.Name, dns.rdatatype.RdataType]:
        return dns.name.from_text(name), dns.rdatatype.from_text(rdtype)

    def add(self, name: str, rdtype: str, *rdata_text: str) -> None:
        """Add records of any type in zone-file syntax: add("mx.example.com", "A", "10.0.0.1")."""
        key = self._key(name, rdtype)
        for text in rdata_text:  # fail here, not when a query arrives
            dns.rdata.from_text(dns.rdataclass.IN, key[1], text)
        with self._lock:
            self._records.setdefault(key, []).extend(rdata_text)

    def txt(self, name: str, *values: str) -> None:
        """Add one TXT record per value; long values become several 255-octet strings."""
        self.add(name, "TXT", *(" ".join(_quoted(s) for s in txt_strings(v)) for v in values))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Forget the records of name (of one type, or all of them)."""
        owner = dns.name.from_text(name)
        with self._lock:
            for owner_, type_ in list(self._records):
                if owner_ == owner and (rdtype is None or type_ == dns.rdatatype.from_text(rdtype)):
                    del self._records[(owner_, type_)]

    def set_txt(self, name: str, *values: str) -> None:
        """Replace the TXT records of name."""
        self.remove(name, "TXT")
        self.txt(name, *values)

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form `faultmail doctor --resolver` takes."""
        return f"{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> DnsServer:
        if self._thread is not None:
            raise RuntimeError("DNS server already running")
        for attempt in range(5):
            try:
                self._bind()
                break
            except OSError:
                self._close_sockets()
                if not self._auto_port or attempt == 4:
                    raise
                self.port = free_port()  # taken between choosing and binding (UDP or TCP)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def _bind(self) -> None:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.host, self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((self.host, self.port))
        self._tcp.listen(16)

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        thread.join(timeout=10)
        self._thread = None
        self._close_sockets()

    def close(self) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None

    # -- serving (the server's thread) ---------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            selector.register(self._wake_r, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in selector.select():
                    if key.data == "stop":
                        return
                    if key.data == "udp":
                        self._serve_udp()
                    else:
                        self._serve_tcp()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        try:
            wire, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        reply = self._reply(wire, "udp")
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        # One client at a time is plenty for tests; a stuck client cannot hold the thread long.
        with conn:
            conn.settimeout(2.0)
            try:
                while True:
                    header = _recv_exactly(conn, 2)
                    if header is None:
                        return
                    wire = _recv_exactly(conn, struct.unpack("!H", header)[0])
                    if wire is None:
                        return
                    reply = self._reply(wire, "tcp")
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    def _reply(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        with self._lock:
            self._queries.append(
                Query(
                    question.name.to_text(omit_final_dot=True),
                    dns.rdatatype.to_text(question.rdtype),
                    transport,
                )
            )
            # A name exists when it owns records or has descendants that do (RFC 8020).
            known = any(owner.is_subdomain(question.name) for owner, _ in self._records)
            texts = list(self._records.get((question.name, question.rdtype), []))
        if not known:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif texts:
            response.answer.append(
                dns.rrset.from_text_list(question.name, _TTL, "IN", question.rdtype, texts)
            )
        if transport == "udp":
            limit = max(query.payload, _UDP_PLAIN_MAX) if query.edns >= 0 else _UDP_PLAIN_MAX
            if not self.truncate_udp:
                try:
                    return bytes(response.to_wire(max_size=limit))
                except dns.exception.TooBig:
                    pass
            # Too big for UDP (or told to pretend): TC set, no records; the client asks again
            # over TCP.
            response.answer.clear()
            response.flags |= dns.flags.TC
        return bytes(response.to_wire())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DnsServer {self.address} {state} records={len(self._records)}>"


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class CannedLookups:
    """The doctor's `Lookups` over canned records: names absent from a table have no such
    records; names in `failing` raise LookupFailed (a server that does not answer). Every
    question is recorded in `asked` as (name, type), so tests can count lookups."""

    where = "canned records"

    def __init__(
        self,
        txt: Mapping[str, Iterable[str]] | None = None,
        addresses: Mapping[str, Iterable[str]] | None = None,
        mx: Mapping[str, Iterable[str]] | None = None,
        failing: Iterable[str] = (),
    ) -> None:
        self.txt_records = {k: list(v) for k, v in (txt or {}).items()}
        self.address_records = {k: list(v) for k, v in (addresses or {}).items()}
        self.mx_records = {k: list(v) for k, v in (mx or {}).items()}
        self.failing = set(failing)
        self.asked: list[tuple[str, str]] = []

    def _ask(self, name: str, rdtype: str) -> None:
        self.asked.append((name, rdtype))
        if name in self.failing:
            raise LookupFailed(f"{name} {rdtype} via {self.where}: timed out")

    async def txt(self, name: str) -> list[str] | None:
        self._ask(name, "TXT")
        return self.txt_records.get(name)

    async def addresses(self, name: str) -> list[IPAddress]:
        self._ask(name, "A")
        return [ipaddress.ip_address(a) for a in self.address_records.get(name, [])]

    async def mx(self, name: str) -> list[str]:
        self._ask(name, "MX")
        return self.mx_records.get(name, [])


def dkim_txt_lookup(records: Mapping[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc` answering TXT questions from records (name without trailing dot)."""

    def lookup(name: bytes, **_: Any) -> bytes | None:
        txt = records.get(name.decode().rstrip("."))
        return txt.encode() if txt else None

    return lookup
