"""`faultmail doctor`: is this gateway ready to turn faults into mail? One line per check.

Each check says OK, WARN or FAIL, what it saw, and for WARN/FAIL the fix in one line:

- config:     the file validates; secret files readable by others
- state dir:  exists (or can be created) and is writable; database: read-only open,
              `PRAGMA quick_check`, schema version against SCHEMA_VERSION; disk: free space
- broker:     TCP, TLS (verified, days to expiry), login, QoS 1 subscription to mqtt.topics
              (client id + "-doctor" on a clean session: the daemon's session is left alone)
- relay:      TCP, STARTTLS offered (security = "starttls"), certificate verified with the
              daemon's TLS policy (host name, days to expiry), what EHLO advertised (SIZE,
              PIPELINING, AUTH, SMTPUTF8), AUTH accepted; then QUIT. No mail is ever sent,
              and credentials only ever go over verified TLS.
- DNS:        DKIM key(s) against the TXT record at selector._domainkey.domain, SPF for the
              From domain (evaluated for this gateway's address when known), DMARC policy and
              alignment; through dnspython, with the resolver given or the system's
- clock:      against the date in the relay's greeting where it has one, else the kernel's
              NTP status; a clock before a certificate's start is always a FAIL

Exit code (`exit_code`): 0 when nothing FAILed (WARNs included), 1 when anything did; `main`
returns 2 when the configuration itself is invalid (nothing else could be checked).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import enum
import getpass
import ipaddress
import os
import re
import shutil
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import ConfigError, DeliveryError
from agent.outbox import SCHEMA_VERSION
from agent.settings import Settings, load_settings
from agent.signing import dkim_public_bytes, dkim_record
from agent.submit import ehlo_name, token_source
from agent.tls import tls_context

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2

# Free space on the state directory's file system below which doctor warns / fails.
DISK_WARN_BYTES = 100 * 1024 * 1024
DISK_FAIL_BYTES = 10 * 1024 * 1024
# A certificate closer than this to its end is a WARN.
CERT_WARN_DAYS = 14
# Clock difference to the relay: up to CLOCK_OK_S is fine, up to CLOCK_FAIL_S a WARN.
CLOCK_OK_S = 60.0
CLOCK_FAIL_S = 300.0
# No clock showing a time before this is right (this faultmail did not exist yet): gateways
# without an RTC battery boot in 1970 until NTP sets the time.
CLOCK_FLOOR = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
# RFC 7208 4.6.4: at most 10 DNS-querying terms per SPF evaluation.
SPF_LOOKUP_LIMIT = 10


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One result: a short name, the verdict, what was seen and (for WARN/FAIL) the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


# ---- entry points ----------------------------------------------------------------------------


def main(
    config_path: Path,
    *,
    resolver: str | None = None,
    timeout: float = 5.0,
    out: TextIO | None = None,
) -> int:
    """`faultmail doctor [--config PATH] [--resolver HOST[:PORT]] [--timeout S]`.

    Prints the checks and returns the exit code: 0 nothing failed, 1 a check failed, 2 the
    configuration is invalid (then only that is reported).
    """
    stream = out if out is not None else sys.stdout
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        checks = [
            _fail(
                "config",
                f"{key}: {text}",
                f"edit {key} in {config_path} (every key is documented in "
                "config/faultmail.toml), then run `faultmail doctor` again",
            )
            for key, text in exc.problems
        ]
        print(format_checks(checks), file=stream)
        return EXIT_CONFIG
    try:
        host, port = parse_resolver(resolver) if resolver else (None, 53)
    except ValueError as exc:
        print(
            f"faultmail: --resolver {resolver}: {exc}; give an IP address [and :PORT]", file=stream
        )
        return EXIT_CONFIG
    checks = run(settings, resolver=host, resolver_port=port, timeout=timeout, config=config_path)
    print(format_checks(checks), file=stream)
    return exit_code(checks)


def run(
    settings: Settings,
    *,
    resolver: str | None = None,
    resolver_port: int = 53,
    timeout: float = 5.0,
    config: Path | None = None,
) -> list[Check]:
    """`run_checks` for synchronous callers (the CLI)."""
    return asyncio.run(
        run_checks(
            settings,
            resolver=resolver,
            resolver_port=resolver_port,
            timeout=timeout,
            config=config,
        )
    )


async def run_checks(
    settings: Settings,
    *,
    resolver: str | None = None,
    resolver_port: int = 53,
    timeout: float = 5.0,
    config: Path | None = None,
) -> list[Check]:
    """Every check, in a fixed order. Network checks run concurrently; each network step
    (connect, TLS handshake, each SMTP command, each DNS query) waits at most timeout seconds.

    resolver: the DNS server to ask (an IP address) and resolver_port its port; None for the
    system resolver (/etc/resolv.conf).
    """
    local = [
        _guard_local("config", lambda: _config_check(settings, config)),
        _guard_local("state dir", lambda: _state_dir_check(settings)),
        _guard_local("database", lambda: _database_check(settings)),
        _guard_local("disk", lambda: _disk_check(settings)),
    ]
    resolver_ = _Resolver(resolver, resolver_port, timeout)
    broker, relay, dkim, dmarc = await asyncio.gather(
        _guard("broker", asyncio.to_thread(_broker_checks, settings, timeout)),
        _guard("relay", _relay_checks(settings, timeout)),
        _guard("DKIM", _dkim_checks(settings, resolver_)),
        _guard("DMARC", _dmarc_checks(settings, resolver_)),
    )
    spf = await _guard("SPF", _spf_checks(settings, resolver_, relay.facts.local_address))
    clock = _clock_check([relay.facts, broker.facts])
    groups = (broker, relay, dkim, spf, dmarc)
    return [*local, *(c for group in groups for c in group.checks), clock]


def format_checks(checks: Sequence[Check]) -> str:
    """Aligned lines ``STATUS  name  detail``, with ``fix: ...`` under each WARN and FAIL."""
    width = max((len(c.name) for c in checks), default=0)
    indent = " " * (6 + width + 2)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<6}{check.name:<{width}}  {check.detail}")
        if check.status is not Status.OK and check.fix:
            lines.append(f"{indent}fix: {check.fix}")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when no check FAILed (WARNs do not change it), 1 otherwise."""
    return EXIT_FAIL if any(c.status is Status.FAIL for c in checks) else EXIT_OK


def parse_resolver(value: str) -> tuple[str, int]:
    """``127.0.0.1``, ``127.0.0.1:5353``, ``::1`` or ``[::1]:5353`` → (address, port)."""
    text = value.strip()
    port = 53
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        address = text
    ipaddress.ip_address(address)  # dnspython wants an address, not a name
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return address, port


@dataclass
class _Facts:
    """What one network check learnt that the clock and SPF checks use."""

    local_address: str | None = None  # this gateway's address on the connection
    peer_time: datetime.datetime | None = None  # the peer's clock (relay greeting date)
    seen_at: datetime.datetime | None = None  # our clock when that arrived
    peer_time_text: str = ""
    certificates: list[tuple[str, x509.Certificate]] = field(default_factory=list)


@dataclass
class _Group:
    checks: list[Check]
    facts: _Facts = field(default_factory=_Facts)


def _crashed(name: str, exc: Exception) -> Check:
    return _fail(
        name,
        f"the check itself failed: {type(exc).__name__}: {exc}",
        "report this as a faultmail bug, with this output",
    )


async def _guard(name: str, work: Awaitable[_Group]) -> _Group:
    """A bug in one check becomes a FAIL line; the other checks still report."""
    try:
        return await work
    except Exception as exc:
        return _Group([_crashed(name, exc)])


def _guard_local(name: str, work: Callable[[], Check]) -> Check:
    try:
        return work()
    except Exception as exc:
        return _crashed(name, exc)


# ---- local: config, state dir, database, disk ------------------------------------------------


def _config_check(settings: Settings, config: Path | None) -> Check:
    where = str(config) if config is not None else "the configuration"
    problems = settings.permission_problems()
    if problems:
        detail = f"{where} is valid, but " + "; ".join(problem for problem, _ in problems)
        return _warn("config", detail, " && ".join(fix for _, fix in problems))
    return _ok("config", f"{where} is valid")


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _state_dir_check(settings: Settings) -> Check:
    directory = settings.gateway.state_dir
    user = getpass.getuser()
    if directory.exists() and not directory.is_dir():
        return _fail(
            "state dir",
            f"{directory} exists but is not a directory",
            "move it away or set gateway.state_dir to a directory",
        )
    if not directory.exists():
        parent = _existing_ancestor(directory)
        if not parent.is_dir():
            return _fail(
                "state dir",
                f"{directory} cannot be created: {parent} is a file",
                "set gateway.state_dir to a directory path (e.g. /var/lib/faultmail)",
            )
        if os.access(parent, os.W_OK | os.X_OK):
            return _ok(
                "state dir",
                f"{directory} does not exist yet; the daemon creates it ({parent} is writable "
                f"by {user})",
            )
        return _fail(
            "state dir",
            f"{directory} does not exist and {parent} is not writable by {user}",
            f"mkdir -p {directory} && chown {user} {directory} "
            "(or StateDirectory=faultmail in the systemd unit)",
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".doctor-", dir=directory)
    except OSError as exc:
        return _fail(
            "state dir",
            f"cannot create a file in {directory} as {user}: {exc.strerror}",
            f"chown {user} {directory} (run doctor as the user the daemon runs as)",
        )
    os.close(fd)
    os.unlink(name)
    return _ok("state dir", f"{directory} is writable by {user}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _database_check(settings: Settings) -> Check:
    path = settings.outbox_path
    name = "database"
    if not path.exists():
        return _ok(name, f"{path} does not exist yet; the daemon creates it at its first start")
    if not path.is_file():
        return _fail(name, f"{path} is not a file", f"move {path} away; the daemon needs a file")
    if not os.access(path, os.R_OK):
        return _fail(
            name,
            f"{path} is not readable by {getpass.getuser()}",
            "run doctor as the user the daemon runs as (sudo -u faultmail faultmail doctor)",
        )
    aside = (
        f"stop faultmail, keep the file for inspection (mv {path} {path}.damaged), then start "
        "faultmail to create a new one (alerts still pending in the old file are not sent); "
        "or restore a backup"
    )
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            counts: dict[str, int] = {}
            if "mails" in tables:
                counts = {
                    str(state): int(n)
                    for state, n in conn.execute("SELECT state, count(*) FROM mails GROUP BY state")
                }
    except sqlite3.DatabaseError as exc:
        return _fail(name, f"{path} cannot be read as an SQLite database: {exc}", aside)
    if problems != ["ok"]:
        return _fail(name, f"{path} is damaged: {'; '.join(problems)[:200]}", aside)
    if version > SCHEMA_VERSION:
        return _fail(
            name,
            f"{path} has schema version {version}, newer than this faultmail ({SCHEMA_VERSION})",
            "upgrade faultmail to the version that wrote this database",
        )
    size = page_size * pages
    if version == 0 and not tables:
        return _ok(name, f"{path} is empty; the daemon sets it up at its next start")
    state = "" if version == SCHEMA_VERSION else f", migrated to {SCHEMA_VERSION} at next start"
    detail = (
        f"{path}: integrity ok, schema {version}{state}, {_size(size)}, "
        f"{counts.get('pending', 0)} mail(s) pending, {counts.get('dead', 0)} dead"
    )
    limit = settings.outbox.max_bytes
    if size > 0.9 * limit:
        return _warn(
            name,
            f"{detail}; that is {size / limit:.0%} of outbox.max_bytes",
            "raise outbox.max_bytes or lower outbox.keep_days; at the cap history is pruned "
            "and then ingest pauses",
        )
    return _ok(name, detail)


def _disk_check(settings: Settings) -> Check:
    where = _existing_ancestor(settings.gateway.state_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return _warn("disk", f"cannot measure free space at {where}: {exc}", "check the mount")
    detail = f"{_size(usage.free)} free of {_size(usage.total)} at {where}"
    fix = (
        f"free space on the file system of {where}: when it is full faultmail stops "
        "acknowledging alerts (the broker keeps them)"
    )
    if usage.free < DISK_FAIL_BYTES:
        return _fail("disk", detail, fix)
    if usage.free < DISK_WARN_BYTES:
        return _warn("disk", f"{detail} (less than {_size(DISK_WARN_BYTES)})", fix)
    return _ok("disk", detail)


# ---- certificates and TLS failures -----------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names: list[str] = []
    if san is not None:
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def _issuer(cert: x509.Certificate) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = cert.issuer.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return cert.issuer.rfc4514_string() or "unknown"


def _days(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds() // 86400)


_E = TypeVar("_E", bound=BaseException)


def _find_exception(exc: BaseException, kind: type[_E]) -> _E | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class _Peer:
    """Who a TLS check talks about and which keys fix it."""

    who: str  # "relay" / "broker"
    host: str
    host_key: str
    ca_key: str
    ca_file: str
    consequence: str  # what happens until it is fixed


def _cert_ok(name: str, peer: _Peer, cert: x509.Certificate, version: str | None) -> Check:
    left = cert.not_valid_after_utc - _now()
    expiry = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    detail = (
        f"certificate valid for {peer.host}, expires in {_days(left)} days ({expiry}); "
        f"issuer {_issuer(cert)}{f', {version}' if version else ''}"
    )
    if _days(left) < CERT_WARN_DAYS:
        return _warn(
            name,
            detail,
            f"renew the {peer.who}'s certificate before {expiry}: then {peer.consequence}",
        )
    return _ok(name, detail)


def _tls_failure(
    name: str, peer: _Peer, exc: BaseException, cert: x509.Certificate | None
) -> Check:
    """A FAIL that says what is wrong with the certificate (or the handshake) and the fix."""
    verify = _find_exception(exc, ssl.SSLCertVerificationError)
    code = verify.verify_code if verify is not None else None
    message = (verify.verify_message if verify is not None else "") or str(exc)
    now = _now()
    if code == 10 or "expired" in message:
        when = ""
        if cert is not None:
            ago = _days(now - cert.not_valid_after_utc)
            when = f" on {cert.not_valid_after_utc:%Y-%m-%d} ({ago} days ago)"
        return _fail(
            name,
            f"the {peer.who}'s certificate expired{when}; {peer.consequence} until it is renewed",
            f"renew the {peer.who}'s certificate (if it is not really expired, this gateway's "
            "clock is wrong: timedatectl set-ntp true)",
        )
    if code == 9 or "not yet valid" in message:
        start = f" before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC" if cert else ""
        return _fail(
            name,
            f"the {peer.who}'s certificate is not valid yet{start}: our clock says "
            f"{now:%Y-%m-%d %H:%M} UTC",
            "set this gateway's clock (timedatectl set-ntp true, or chrony); if the clock is "
            f"right, the {peer.who}'s certificate was issued with a wrong start date",
        )
    if code in (62, 64) or "mismatch" in message or "doesn't match" in message:
        names = ", ".join(_cert_names(cert)) if cert is not None else "other names"
        return _fail(
            name,
            f"the {peer.who}'s certificate is for {names}, not {peer.host}; {peer.consequence}",
            f"set {peer.host_key} to a name the certificate lists ({names}), or give the "
            f"{peer.who} a certificate for {peer.host}",
        )
    if verify is not None:
        issuer = f" (issuer: {_issuer(cert)})" if cert is not None else ""
        if peer.ca_file:
            fix = (
                f"{peer.ca_key} = {peer.ca_file} does not contain the CA that issued the "
                f"{peer.who}'s certificate{issuer}: point {peer.ca_key} at that CA"
            )
        else:
            fix = (
                f"set {peer.ca_key} to the CA that issued the {peer.who}'s certificate{issuer}, "
                "or install that CA in the system trust store"
            )
        return _fail(
            name,
            f"the {peer.who}'s certificate is not trusted: {message}; {peer.consequence}",
            fix,
        )
    return _fail(
        name,
        f"TLS handshake with the {peer.who} failed: {message}",
        f"the {peer.who} must speak TLS 1.2 or later on this port with a certificate for "
        f"{peer.host}; check {peer.host_key} and the port",
    )


def _diagnostic_context(client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    """Only to read the certificate of a peer that failed verification, to explain why.
    Nothing but a handshake (and, for SMTP, EHLO/STARTTLS/QUIT) ever goes over it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        with contextlib.suppress(ssl.SSLError, OSError):
            ctx.load_cert_chain(client_cert, client_key or None)
    return ctx


def _load_der(der: bytes | None) -> x509.Certificate | None:
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


# ---- the broker ------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe_filter(topic: str) -> str:
    """A shared subscription gets its own group: joining the daemon's group would take
    messages away from the daemon for as long as the probe is subscribed."""
    if topic.startswith("$share/"):
        _, group, rest = topic.split("/", 2)
        return f"$share/{group}-doctor/{rest}"
    return topic


def _broker_checks(settings: Settings, timeout: float) -> _Group:
    s = settings.mqtt
    where = f"{s.host}:{s.port}"
    facts = _Facts()
    try:
        sock = socket.create_connection((s.host, s.port), timeout=timeout)
    except OSError as exc:
        return _Group(
            [
                _fail(
                    "broker",
                    f"cannot connect to {where}: {exc.strerror or exc}",
                    "check mqtt.host and mqtt.port, that the broker runs and listens there, and "
                    "the firewall",
                )
            ]
        )
    checks = [_ok("broker", f"{where} accepts connections (MQTT {s.protocol})")]
    peer = _Peer(
        "broker",
        s.host,
        "mqtt.host",
        "mqtt.ca_file",
        s.ca_file,
        "faultmail receives no alerts",
    )
    context: ssl.SSLContext | None = None
    with sock:
        if s.tls:
            try:
                context = tls_context(s.ca_file, s.client_cert, s.client_key)
            except (ssl.SSLError, OSError) as exc:
                checks.append(
                    _fail(
                        "broker TLS",
                        f"cannot load mqtt.client_cert/client_key: {exc}",
                        "point mqtt.client_cert and mqtt.client_key at a matching PEM "
                        "certificate and key",
                    )
                )
                return _Group(checks, facts)
            try:
                with context.wrap_socket(sock, server_hostname=s.host) as tls:
                    cert = _load_der(tls.getpeercert(binary_form=True))
                    version = tls.version()
            except (ssl.SSLError, OSError) as exc:
                seen = _broker_certificate(settings, timeout)
                checks.append(_tls_failure("broker TLS", peer, exc, seen))
                return _Group(checks, facts)
            if cert is not None:
                facts.certificates.append(("broker", cert))
                checks.append(_cert_ok("broker TLS", peer, cert, version))
        elif _is_loopback(s.host):
            checks.append(_ok("broker TLS", "plain TCP on the loopback interface (mqtt.tls off)"))
        else:
            checks.append(
                _warn(
                    "broker TLS",
                    f"not encrypted: alerts{' and the MQTT password' if s.username else ''} "
                    "cross the network in clear",
                    "enable TLS on the broker and set mqtt.tls = true with mqtt.ca_file",
                )
            )
    checks += _mqtt_session(settings, timeout, context)
    return _Group(checks, facts)


def _broker_certificate(settings: Settings, timeout: float) -> x509.Certificate | None:
    s = settings.mqtt
    context = _diagnostic_context(s.client_cert, s.client_key)
    try:
        with (
            socket.create_connection((s.host, s.port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=s.host) as tls,
        ):
            return _load_der(tls.getpeercert(binary_form=True))
    except (ssl.SSLError, OSError):
        return None


def _mqtt_session(
    settings: Settings, timeout: float, context: ssl.SSLContext | None
) -> list[Check]:
    """Log in on a clean session with our own client id, subscribe QoS 1, disconnect.

    context: the TLS context the broker TLS check already loaded (None without mqtt.tls).
    """
    s = settings.mqtt
    v5 = s.protocol == "5"
    client_id = f"{s.client_id or f'faultmail-{settings.gateway.id}'}-doctor"
    who = s.username or "anonymous"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    client.connect_timeout = timeout
    if context is not None:
        client.tls_set_context(context)
    if s.username:
        client.username_pw_set(s.username, s.password())
    events: dict[str, Any] = {}

    def on_connect(
        _c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        events["connack"] = rc

    def on_subscribe(
        _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        events["suback"] = rcs

    def on_disconnect(
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        events["closed"] = rc

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    deadline = time.monotonic() + timeout

    def pump(done: Callable[[], bool]) -> None:
        while not done() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                client.loop(timeout=0.01)  # lets paho run on_disconnect
                return

    login_fix = (
        f"check mqtt.username ({s.username}) and the password in mqtt.password_file "
        f"({s.password_file}); the broker's password file must have this user"
        if s.username
        else "the broker wants a login: set mqtt.username and mqtt.password_file"
    )
    try:
        try:
            if v5:
                client.connect(s.host, s.port, keepalive=30, clean_start=True)
            else:
                client.connect(s.host, s.port, keepalive=30)
        except (OSError, ValueError) as exc:
            return [_fail("broker login", f"could not open an MQTT session: {exc}", login_fix)]
        pump(lambda: "connack" in events or "closed" in events)
        connack: ReasonCode | None = events.get("connack")
        if connack is None:
            detail = (
                "the broker closed the connection before answering the login"
                if "closed" in events
                else f"no answer to the login within {timeout:g} s"
            )
            fix = (
                "check mqtt.client_cert/client_key if the broker requires client "
                f"certificates; the broker's log says why ({client_id})"
            )
            return [_fail("broker login", detail, fix)]
        if connack.is_failure:
            return [
                _fail(
                    "broker login", f"the broker refused the login as {who}: {connack}", login_fix
                )
            ]
        checks = [_ok("broker login", f"accepted as {who} (client id {client_id}, clean session)")]
        filters = [_probe_filter(t) for t in s.topics]
        if v5:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in filters])
        else:
            client.subscribe([(t, 1) for t in filters])
        pump(lambda: "suback" in events or "closed" in events)
        checks.append(_suback_check(settings, filters, events.get("suback"), timeout))
        return checks
    finally:
        if client.is_connected():
            client.disconnect()
            pump(lambda: "closed" in events)
        client._reset_sockets()  # the socket pair and anything paho left open


def _suback_check(
    settings: Settings, filters: list[str], codes: list[ReasonCode] | None, timeout: float
) -> Check:
    s = settings.mqtt
    name = "broker subscribe"
    acl_fix = (
        f"allow {s.username or 'this client'} to read these topics in the broker's ACL "
        f"(Mosquitto acl_file: user {s.username or '<name>'} / topic read <filter>)"
    )
    if codes is None:
        return _fail(name, f"no SUBACK within {timeout:g} s", acl_fix)
    refused = [f"{t} ({rc})" for t, rc in zip(filters, codes, strict=False) if rc.is_failure]
    if refused:
        return _fail(name, f"the broker refused: {', '.join(refused)}", acl_fix)
    low = [t for t, rc in zip(filters, codes, strict=False) if rc.value < 1]
    shared = (
        " (shared subscriptions probed in their own group)"
        if any(t.startswith("$share/") for t in filters)
        else ""
    )
    if low:
        return _warn(
            name,
            f"granted only QoS 0 for {', '.join(low)}: alerts can be lost while we are away",
            "allow QoS 1 for these topics on the broker (max_qos)",
        )
    # A SUBACK shows subscribe ACLs (Mosquitto's dynamic security, most other brokers);
    # Mosquitto's acl_file grants every subscription and filters each message on delivery.
    return _ok(name, f"QoS 1 granted for {', '.join(filters)}{shared}")


# ---- the relay -------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s*)?\d{1,2}\s+"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{4}\s+"
    r"\d{1,2}:\d{2}(?::\d{2})?\s*(?:[+-]\d{4}|GMT|UTC|UT)",
    re.IGNORECASE,
)


def greeting_time(text: str) -> tuple[datetime.datetime, str] | None:
    """The RFC 5322 date many relays put in their 220 greeting (Exim, Sendmail, Microsoft)."""
    match = _DATE_RE.search(text)
    if match is None:
        return None
    try:
        when = parsedate_to_datetime(match.group(0).replace("UTC", "GMT"))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when, match.group(0)


def _extensions(smtp: aiosmtplib.SMTP) -> str:
    ext = smtp.esmtp_extensions
    parts = []
    if "size" in ext:
        size = ext["size"].strip()
        parts.append(f"SIZE {_size(int(size))}" if size.isdigit() and int(size) else "SIZE")
    for key in ("pipelining", "8bitmime", "smtputf8", "chunking"):
        if key in ext:
            parts.append(key.upper())
    if "auth" in ext:
        parts.append(f"AUTH {ext['auth'].strip().upper()}")
    missing = [k.upper() for k in ("size", "pipelining", "auth", "smtputf8") if k not in ext]
    text = ", ".join(parts) or "nothing"
    return text + (f"; not {', '.join(missing)}" if missing else "")


async def _relay_certificate(
    settings: Settings, ehlo: str, timeout: float
) -> x509.Certificate | None:
    """The certificate of a relay that failed verification (no login, no mail)."""
    s = settings.smtp
    implicit = s.security == "tls"
    smtp = aiosmtplib.SMTP(
        hostname=s.host,
        port=s.port,
        local_hostname=ehlo,
        timeout=timeout,
        use_tls=implicit,
        start_tls=False,
        validate_certs=False,
        tls_context=_diagnostic_context(),
    )
    try:
        await smtp.connect()
        if not implicit:
            await smtp.ehlo()
            await smtp.starttls()
        ssl_object = smtp.get_transport_info("ssl_object")
        cert = _load_der(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), timeout)
        return cert
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return None
    finally:
        smtp.close()


async def _relay_checks(settings: Settings, timeout: float) -> _Group:
    s = settings.smtp
    ehlo = ehlo_name(s)
    implicit = s.security == "tls"
    where = f"{s.host}:{s.port}"
    facts = _Facts()
    peer = _Peer("relay", s.host, "smtp.host", "smtp.ca_file", s.ca_file, "faultmail will not send")
    try:
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=ehlo,
            timeout=timeout,
            use_tls=implicit,
            start_tls=False,  # done below, step by step; never AUTH without it
            validate_certs=True,
            tls_context=tls_context(s.ca_file),
        )
    except ValueError as exc:
        return _Group(
            [_fail("relay EHLO", f"cannot use {ehlo!r} as the EHLO name: {exc}", _EHLO_FIX)]
        )
    checks: list[Check] = []
    try:
        try:
            greeting = await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            checks.append(
                _fail(
                    "relay",
                    f"{where} refused the session: {exc.code} {exc.message}",
                    "the relay does not accept this gateway: check smtp.host/smtp.port and the "
                    "relay's client restrictions",
                )
            )
            return _Group(checks, facts)
        except (aiosmtplib.SMTPException, OSError) as exc:
            if implicit and _find_exception(exc, ssl.SSLError) is not None:
                checks.append(_ok("relay", f"{where} accepts connections (implicit TLS)"))
                cert = await _relay_certificate(settings, ehlo, timeout)
                checks.append(_tls_failure("relay TLS", peer, exc, cert))
                return _Group(checks, facts)
            timed_out = isinstance(exc, aiosmtplib.SMTPTimeoutError)
            checks.append(
                _fail(
                    "relay",
                    f"no answer from {where} within {timeout:g} s"
                    if timed_out
                    else f"cannot connect to {where}: {_short(exc)}",
                    "check smtp.host and smtp.port, that the relay is up, and the firewall "
                    f"(faultmail submits on {s.port} with {s.security})",
                )
            )
            return _Group(checks, facts)
        facts.seen_at = _now()
        first_line = greeting.message.splitlines()[0] if greeting.message else ""
        stamp = greeting_time(greeting.message)
        if stamp is not None:
            facts.peer_time, facts.peer_time_text = stamp
        sockname = smtp.get_transport_info("sockname")
        if isinstance(sockname, tuple) and sockname:
            facts.local_address = str(sockname[0])
        mode = "implicit TLS" if implicit else "STARTTLS"
        checks.append(_ok("relay", f"{where} answers ({mode}): {greeting.code} {first_line}"[:140]))
        refused = await _ehlo(smtp, ehlo)
        if refused is not None:
            checks.append(refused)
            return _Group(checks, facts)
        if not implicit:
            if not smtp.supports_extension("starttls"):
                checks.append(
                    _fail(
                        "relay STARTTLS",
                        "the relay does not offer STARTTLS; faultmail will not send "
                        f"(it advertised: {_extensions(smtp)})",
                        "enable STARTTLS on the relay's submission port, or use its implicit-TLS "
                        'port: smtp.port = 465 with security = "tls"',
                    )
                )
                await _quit(smtp, timeout)
                return _Group(checks, facts)
            checks.append(_ok("relay STARTTLS", "offered"))
            try:
                await smtp.starttls()
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                cert = await _relay_certificate(settings, ehlo, timeout)
                checks.append(_tls_failure("relay TLS", peer, exc, cert))
                return _Group(checks, facts)
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is None:  # cannot happen: never log in without TLS
            checks.append(_fail("relay TLS", "the connection is not encrypted", _EHLO_FIX))
            return _Group(checks, facts)
        cert = _load_der(ssl_object.getpeercert(binary_form=True))
        if cert is not None:
            facts.certificates.append(("relay", cert))
            checks.append(_cert_ok("relay TLS", peer, cert, ssl_object.version()))
        refused = await _ehlo(smtp, ehlo)
        if refused is not None:
            checks.append(refused)
            return _Group(checks, facts)
        advertised = f"EHLO {ehlo}: {_extensions(smtp)}"
        if not smtp.supports_extension("auth"):
            checks.append(
                _fail(
                    "relay EHLO",
                    f"{advertised}; no AUTH even over TLS, and faultmail always logs in",
                    "enable SMTP AUTH for submission on the relay (for Microsoft 365: "
                    "authenticated SMTP for this mailbox)",
                )
            )
            await _quit(smtp, timeout)
            return _Group(checks, facts)
        checks.append(_ok("relay EHLO", advertised))
        checks.append(await _relay_login(smtp, settings))
        await _quit(smtp, timeout)
        return _Group(checks, facts)
    finally:
        smtp.close()


_EHLO_FIX = "set smtp.ehlo_name to this gateway's fully qualified host name"


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


async def _relay_login(smtp: aiosmtplib.SMTP, settings: Settings) -> Check:
    """Log in the way the daemon does (submit.SmtpSubmitter._login): password or XOAUTH2."""
    s = settings.smtp
    tokens = token_source(s)
    if tokens is None:
        fix = (
            f"check smtp.username ({s.username}) and the password in smtp.password_file "
            f"({s.password_file}); the account may also be locked or lack SMTP AUTH"
        )
    else:
        fix = (
            f"check smtp.username ({s.username}) and the token source in [smtp.oauth]; the "
            "app registration needs the SMTP.SendAsApp permission (Microsoft 365) and the "
            "mailbox SMTP AUTH"
        )
    try:
        if tokens is None:
            await smtp.login(s.username, s.password())
        else:
            await smtp.auth_xoauth2(s.username, await tokens.token())
    except DeliveryError as exc:  # the token source itself failed
        return _fail("relay AUTH", f"no OAuth token for {s.username}: {_short(exc)}", fix)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return _fail(
            "relay AUTH",
            f"the relay refused the login as {s.username}: {exc.code} {exc.message}",
            fix,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        return _fail("relay AUTH", f"login as {s.username} failed: {_short(exc)}", fix)
    mechanism = "XOAUTH2" if tokens is not None else "password"
    return _ok("relay AUTH", f"accepted for {s.username} ({mechanism}; no mail sent)")


async def _quit(smtp: aiosmtplib.SMTP, timeout: float) -> None:
    if smtp.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), timeout)


# ---- DNS: DKIM, SPF, DMARC -------------------------------------------------------------------


class _LookupFailed(Exception):
    pass


class _Resolver:
    """TXT, address and MX lookups through dnspython; None/[] for names without such records."""

    def __init__(self, server: str | None, port: int, timeout: float) -> None:
        self.problem = ""
        if server is None:
            try:
                self._resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self.problem = f"no system resolver ({exc})"
            self.where = "the system resolver"
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [server]
            self._resolver.port = port
            self.where = f"{server}:{port}" if port != 53 else server
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        if self.problem:
            raise _LookupFailed(self.problem)
        try:
            return await self._resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            raise _LookupFailed(f"{name} {rdtype} via {self.where}: {exc}") from None

    async def txt(self, name: str) -> list[str] | None:
        answer = await self._resolve(name, "TXT")
        if answer is None:
            return None
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def addresses(self, name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for rdtype in ("A", "AAAA"):
            answer = await self._resolve(name, rdtype)
            found += [ipaddress.ip_address(r.to_text()) for r in answer or []]
        return found

    async def mx(self, name: str) -> list[str]:
        answer = await self._resolve(name, "MX")
        return [r.exchange.to_text(omit_final_dot=True) for r in answer or []]


def _lookup_warn(name: str, resolver: _Resolver, exc: _LookupFailed) -> Check:
    return _warn(
        name,
        f"could not look up: {exc}",
        f"check DNS from this gateway ({resolver.where}); `faultmail doctor --resolver IP[:PORT]` "
        "asks another server",
    )


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    return tags


@dataclass(frozen=True)
class _DkimKey:
    kind: str  # "rsa" / "ed25519"
    public: bytes  # what p= carries, decoded
    description: str
    bits: int = 0


def _dkim_key(data: bytes, kind: str) -> _DkimKey:
    """The public half of a key file as `faultmail dkim keygen` writes it (dkimpy's formats)."""
    if kind == "rsa":
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return _DkimKey(
            "rsa", dkim_public_bytes(private), f"RSA {private.key_size}", private.key_size
        )
    seed = base64.b64decode(data.strip(), validate=True)
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return _DkimKey("ed25519", dkim_public_bytes(edkey), "Ed25519")


def _same_public_key(published: bytes, ours: _DkimKey) -> bool:
    if published == ours.public:
        return True
    if ours.kind != "rsa":
        return False
    # Some publish PKCS#1 RSAPublicKey instead of SubjectPublicKeyInfo; dkimpy accepts both.
    try:
        theirs = serialization.load_der_public_key(published)
        mine = serialization.load_der_public_key(ours.public)
    except (ValueError, TypeError):
        return False
    return (
        isinstance(theirs, rsa.RSAPublicKey)
        and isinstance(mine, rsa.RSAPublicKey)
        and theirs.public_numbers() == mine.public_numbers()
    )


async def _dkim_checks(settings: Settings, resolver: _Resolver) -> _Group:
    dkim = settings.dkim
    if dkim is None:
        domain = settings.smtp.sender_domain
        return _Group(
            [
                _warn(
                    "DKIM",
                    "not configured: mail goes out unsigned, so DMARC rests on SPF alone",
                    f"faultmail dkim keygen --selector S --domain {domain}, publish the record "
                    "it prints, and add a [dkim] section",
                )
            ]
        )
    keys = [("DKIM rsa", dkim.selector, dkim.private_key_file, "rsa", "dkim.private_key_file")]
    if dkim.ed25519_key_file:
        keys.append(
            (
                "DKIM ed25519",
                dkim.ed25519_selector,
                dkim.ed25519_key_file,
                "ed25519",
                "dkim.ed25519_key_file",
            )
        )
    checks = await asyncio.gather(
        *(
            _dkim_check(name, selector, dkim.domain, path, kind, key, resolver)
            for name, selector, path, kind, key in keys
        )
    )
    return _Group(list(checks))


async def _dkim_check(
    name: str,
    selector: str,
    domain: str,
    path: str,
    kind: str,
    key: str,
    resolver: _Resolver,
) -> Check:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _fail(
            name,
            f"cannot read {key} {path}: {exc.strerror or exc}",
            f"make it readable by the daemon's user only: chown faultmail {path} && "
            f"chmod 600 {path}",
        )
    try:
        ours = _dkim_key(data, kind)
    except (ValueError, TypeError) as exc:
        return _fail(
            name,
            f"{key} {path} is not a usable {kind} key: {exc}",
            f"make one with `faultmail dkim keygen --selector {selector} --domain {domain}"
            f"{' --type ed25519' if kind == 'ed25519' else ''}`",
        )
    dns_name = f"{selector}._domainkey.{domain}"
    wanted = dkim_record(kind, ours.public)
    publish = f'publish {dns_name}. IN TXT "{wanted}"'
    try:
        records = await resolver.txt(dns_name)
    except _LookupFailed as exc:
        return _lookup_warn(name, resolver, exc)
    candidates = [r for r in records or [] if "p" in _tags(r)]
    if not candidates:
        return _fail(name, f"no DKIM record at {dns_name}: receivers cannot verify", publish)
    if len(candidates) > 1:
        return _fail(
            name,
            f"{len(candidates)} DKIM records at {dns_name}: receivers pick one at random",
            f"keep only one: {publish}",
        )
    tags = _tags(candidates[0])
    published_kind = tags.get("k", "rsa").lower()
    p_value = re.sub(r"\s+", "", tags.get("p", ""))
    if not p_value:
        return _fail(name, f"the key at {dns_name} is revoked (empty p=)", publish)
    if published_kind != kind:
        return _fail(
            name,
            f"{dns_name} publishes a k={published_kind} key, {key} is {kind}",
            f"{publish} (or use another selector for the {kind} key)",
        )
    try:
        published = base64.b64decode(p_value, validate=True)
    except ValueError:
        return _fail(name, f"the p= value at {dns_name} is not valid base64", publish)
    if not _same_public_key(published, ours):
        return _fail(
            name,
            f"the key published at {dns_name} is not the public half of {path}: "
            "signatures will fail",
            f"{publish}, or point {key} at the key that matches the published one",
        )
    testing = "; t=y (testing) is set" if "y" in tags.get("t", "").split(":") else ""
    detail = f"{dns_name} publishes the public half of {path} ({ours.description}){testing}"
    regenerate = f"make a 2048-bit key: faultmail dkim keygen --selector NEW --domain {domain}"
    if ours.kind == "rsa" and ours.bits < 1024:
        return _fail(name, f"{detail}: receivers ignore RSA keys under 1024 bits", regenerate)
    if ours.kind == "rsa" and ours.bits < 2048:
        return _warn(name, f"{detail}: shorter than the 2048 bits receivers expect", regenerate)
    return _ok(name, detail)


_SPF_MECH = re.compile(r"^([+?~-]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?::(.*))?$", re.I)
_SPF_RESULT = {"+": "pass", "": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass
class _SpfBudget:
    lookups: int = 0
    notes: list[str] = field(default_factory=list)


class _SpfError(Exception):
    def __init__(self, result: str, why: str) -> None:
        self.result = result
        super().__init__(why)


def _spf_records(records: list[str] | None) -> list[str]:
    return [r for r in records or [] if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


def _split_cidr(arg: str) -> tuple[str, int | None, int | None]:
    """'example.com/24//64' → ('example.com', 24, 64)."""
    name, v6 = arg, None
    if "//" in name:
        name, _, v6_text = name.partition("//")
        v6 = int(v6_text)
    v4 = None
    if "/" in name:
        name, _, v4_text = name.partition("/")
        v4 = int(v4_text)
    return name, v4, v6


async def spf_evaluate(
    resolver: _Resolver,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    domain: str,
    budget: _SpfBudget | None = None,
    depth: int = 0,
) -> tuple[str, str]:
    """RFC 7208 check_host() for the common terms: (result, the term that decided).

    Results: pass, fail, softfail, neutral, none, permerror, temperror. Macros and ptr are
    not evaluated (noted in the budget); they count as not matching.
    """
    budget = budget if budget is not None else _SpfBudget()
    if depth > 10:
        return "permerror", "include/redirect loop"
    try:
        spf = _spf_records(await resolver.txt(domain))
    except _LookupFailed as exc:
        return "temperror", str(exc)
    if not spf:
        return "none", f"no SPF record at {domain}"
    if len(spf) > 1:
        return "permerror", f"{len(spf)} SPF records at {domain}"
    redirect = ""
    try:
        for term in spf[0].split()[1:]:
            modifier = re.match(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", term)
            if modifier:
                if modifier.group(1).lower() == "redirect":
                    redirect = modifier.group(2)
                continue
            match = _SPF_MECH.match(term)
            if match is None:
                return "permerror", f"unknown term {term!r} at {domain}"
            if "%" in term:
                budget.notes.append(f"{term} (macros are not evaluated)")
                continue
            qualifier, mech, arg = match.group(1), match.group(2).lower(), match.group(3) or ""
            if await _spf_matches(resolver, ip, domain, mech, arg, budget, depth):
                return _SPF_RESULT[qualifier], f"{term} at {domain}"
        if redirect:
            budget.lookups += 1
            if budget.lookups > SPF_LOOKUP_LIMIT:
                return "permerror", "more than 10 DNS lookups"
            result, term = await spf_evaluate(resolver, ip, redirect, budget, depth + 1)
            return ("permerror" if result == "none" else result), term
    except _SpfError as exc:
        return exc.result, str(exc)
    return "neutral", f"no term matched at {domain}"


async def _spf_matches(
    resolver: _Resolver,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    domain: str,
    mech: str,
    arg: str,
    budget: _SpfBudget,
    depth: int,
) -> bool:
    if mech == "all":
        return True
    if mech in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            raise _SpfError("permerror", f"bad network {mech}:{arg}") from None
        return ip.version == network.version and ip in network
    budget.lookups += 1
    if budget.lookups > SPF_LOOKUP_LIMIT:
        raise _SpfError("permerror", "more than 10 DNS lookups")
    try:
        if mech == "include":
            result, term = await spf_evaluate(resolver, ip, arg, budget, depth + 1)
            if result in ("temperror", "permerror"):
                raise _SpfError(result, term)
            if result == "none":
                raise _SpfError("permerror", f"include:{arg} has no SPF record")
            return result == "pass"
        if mech == "ptr":
            budget.notes.append("ptr (not evaluated)")
            return False
        if mech == "exists":
            return bool(await resolver.addresses(arg))
        name, v4, v6 = _split_cidr(arg)
        name = name or domain
        hosts = [name] if mech == "a" else (await resolver.mx(name))[:10]
        prefix = v4 if ip.version == 4 else v6
        for host in hosts:
            for address in await resolver.addresses(host):
                if address.version != ip.version:
                    continue
                bits = prefix if prefix is not None else address.max_prefixlen
                if ip in ipaddress.ip_network(f"{address}/{bits}", strict=False):
                    return True
        return False
    except _LookupFailed as exc:
        raise _SpfError("temperror", str(exc)) from None


async def _spf_checks(settings: Settings, resolver: _Resolver, gateway_ip: str | None) -> _Group:
    domain = settings.smtp.sender_domain
    name = "SPF"
    suggestion = f'publish {domain}. IN TXT "v=spf1 include:<your relay\'s SPF domain> -all"'
    try:
        records = _spf_records(await resolver.txt(domain))
    except _LookupFailed as exc:
        return _Group([_lookup_warn(name, resolver, exc)])
    if not records:
        return _Group(
            [
                _warn(
                    name,
                    f"no SPF record for the From domain {domain}: the envelope sender cannot "
                    "pass SPF, so DMARC rests on DKIM alone",
                    suggestion,
                )
            ]
        )
    if len(records) > 1:
        return _Group(
            [
                _fail(
                    name,
                    f"{len(records)} SPF records at {domain}: receivers treat that as an error "
                    "(permerror)",
                    "merge them into one v=spf1 record",
                )
            ]
        )
    record = records[0]
    shown = record if len(record) <= 90 else record[:87] + "..."
    if re.search(r"(^|\s)\+?all(\s|$)", record, re.I):
        return _Group(
            [
                _warn(
                    name,
                    f'{domain}: "{shown}" ends in +all: every host on the internet passes SPF '
                    "for this domain",
                    'end the record with "-all" (or "~all") after the senders you use',
                )
            ]
        )
    if gateway_ip is None:
        return _Group([_ok(name, f'{domain}: "{shown}" (this gateway\'s address is unknown)')])
    try:
        ip = ipaddress.ip_address(gateway_ip.split("%")[0])
    except ValueError:
        return _Group([_ok(name, f'{domain}: "{shown}"')])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    budget = _SpfBudget()
    result, term = await spf_evaluate(resolver, ip, domain, budget)
    notes = f"; {', '.join(budget.notes)}" if budget.notes else ""
    if result == "pass":
        return _Group([_ok(name, f'{domain}: "{shown}" allows this gateway ({ip}, {term}){notes}')])
    if result == "temperror":
        return _Group(
            [_lookup_warn(name, resolver, _LookupFailed(f"while evaluating {domain}: {term}"))]
        )
    if result == "permerror":
        return _Group(
            [
                _fail(
                    name,
                    f'{domain}: "{shown}" is broken: {term}',
                    "fix the record: receivers treat a broken SPF record as an error",
                )
            ]
        )
    if not ip.is_global:
        return _Group(
            [
                _ok(
                    name,
                    f'{domain}: "{shown}"; this gateway\'s address {ip} is not public, so '
                    f"receivers check the relay's servers instead ({result} for {ip}){notes}",
                )
            ]
        )
    return _Group(
        [
            _warn(
                name,
                f'{domain}: "{shown}" gives {result} for this gateway\'s address {ip} '
                f"({term}){notes}",
                "fine if the relay sends from its own servers and the record includes them; "
                f"if mail leaves from this address, add ip{ip.version}:{ip} to the record",
            )
        ]
    )


def _org_domain_guess(domain: str) -> str:
    labels = domain.split(".")
    return ".".join(labels[-2:]) if len(labels) > 2 else domain


async def _dmarc_checks(settings: Settings, resolver: _Resolver) -> _Group:
    domain = settings.smtp.sender_domain
    name = "DMARC"
    looked = [domain]
    if _org_domain_guess(domain) != domain:
        # The organisational domain really comes from the public suffix list; two labels is
        # right for example.com-style domains and says so when used.
        looked.append(_org_domain_guess(domain))
    try:
        found: list[str] = []
        where = ""
        for candidate in looked:
            records = await resolver.txt(f"_dmarc.{candidate}")
            found = [r for r in records or [] if r.replace(" ", "").upper().startswith("V=DMARC1")]
            if found:
                where = f"_dmarc.{candidate}"
                break
    except _LookupFailed as exc:
        return _Group([_lookup_warn(name, resolver, exc)])
    if not found:
        return _Group(
            [
                _warn(
                    name,
                    f"no DMARC record at _dmarc.{domain}: receivers apply their own policy",
                    f'publish _dmarc.{domain}. IN TXT "v=DMARC1; p=none; '
                    f'rua=mailto:dmarc@{domain}" and tighten p= once reports look clean',
                )
            ]
        )
    if len(found) > 1:
        return _Group(
            [
                _fail(
                    name,
                    f"{len(found)} DMARC records at {where}: receivers ignore them all",
                    "keep exactly one v=DMARC1 record",
                )
            ]
        )
    tags = _tags(found[0])
    policy = tags.get("p", "")
    modes = {"r": "relaxed", "s": "strict"}
    adkim = modes.get(tags.get("adkim", "r").lower(), tags.get("adkim", "?"))
    aspf = modes.get(tags.get("aspf", "r").lower(), tags.get("aspf", "?"))
    if policy.lower() not in ("none", "quarantine", "reject"):
        return _Group(
            [
                _warn(
                    name,
                    f"{where} has no valid p= ({found[0][:80]})",
                    f"add p=none, p=quarantine or p=reject to the record at {where}",
                )
            ]
        )
    dkim = settings.dkim
    if dkim is not None:
        # settings require dkim.domain == From domain, which satisfies strict and relaxed.
        alignment = f"DKIM d={dkim.domain} aligned ({adkim})"
    else:
        alignment = f"no DKIM: only SPF can align ({aspf})"
    where_note = (
        f" (found at {where}, the guessed organisational domain)"
        if where != f"_dmarc.{domain}"
        else ""
    )
    detail = f"p={policy}, adkim={adkim}, aspf={aspf}; {alignment}{where_note}"
    if dkim is None and policy.lower() != "none":
        return _Group(
            [
                _warn(
                    name,
                    detail,
                    "configure [dkim]: with p=" + policy + " unsigned mail fails DMARC wherever "
                    "SPF does not pass for the relay",
                )
            ]
        )
    return _Group([_ok(name, detail)])


# ---- the clock -------------------------------------------------------------------------------


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux); the trailing padding is part of the ABI.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 16),
    ]


_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


def kernel_clock_synced() -> tuple[bool, float] | None:
    """(synchronised, max error in seconds) from adjtimex(2), read only; None if unknown."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()  # modes = 0: read, change nothing
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    synced = state != _TIME_ERROR and not timex.status & _STA_UNSYNC
    return synced, timex.maxerror / 1_000_000


def _clock_check(facts: list[_Facts]) -> Check:
    name = "clock"
    now = _now()
    ntp_fix = "enable time sync: timedatectl set-ntp true (systemd-timesyncd) or chrony"
    if now < CLOCK_FLOOR:
        return _fail(
            name,
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this faultmail was built: "
            "certificates look not yet valid and DKIM signatures carry a wrong time",
            f"set the time and {ntp_fix} (gateways without an RTC battery boot in 1970)",
        )
    for fact in facts:
        for who, cert in fact.certificates:
            if now < cert.not_valid_before_utc:
                return _fail(
                    name,
                    f"the clock ({now:%Y-%m-%d %H:%M} UTC) is before the start of the {who}'s "
                    f"certificate ({cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)",
                    ntp_fix,
                )
    kernel = kernel_clock_synced()
    kernel_text = (
        "the kernel's NTP state is unknown"
        if kernel is None
        else (
            f"the kernel reports NTP sync (max error {kernel[1] * 1000:.0f} ms)"
            if kernel[0]
            else "the kernel reports the clock as not NTP-synchronised"
        )
    )
    for fact in facts:
        if fact.peer_time is None or fact.seen_at is None:
            continue
        skew = (fact.seen_at - fact.peer_time).total_seconds()
        side = "ahead of" if skew > 0 else "behind"
        detail = (
            f"{abs(skew):.0f} s {side} the relay's clock (its greeting says "
            f"{fact.peer_time_text}); {kernel_text}"
        )
        fix = f"{ntp_fix}; if this gateway's clock is right, the relay's is not"
        if abs(skew) <= CLOCK_OK_S:
            return _ok(name, detail)
        if abs(skew) <= CLOCK_FAIL_S:
            return _warn(name, detail, fix)
        return _fail(
            name,
            f"{detail}: DKIM signature times and TLS certificate checks go wrong",
            fix,
        )
    unseen = (
        "could not compare with another clock (the relay's greeting carries no date; MQTT "
        "carries none)"
    )
    if kernel is not None and kernel[0]:
        return _ok(name, f"{unseen}; {kernel_text}")
    return _warn(name, f"{unseen}; {kernel_text}", ntp_fix)


async def _ehlo(smtp: aiosmtplib.SMTP, ehlo: str) -> Check | None:
    """EHLO (again after STARTTLS); a FAIL check when the relay refuses it."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        return _fail(
            "relay EHLO", f"the relay refused EHLO {ehlo}: {exc.code} {exc.message}", _EHLO_FIX
        )
    return None
