"""A real SMTP submission relay (aiosmtpd) on a loopback port, with recording and fault injection.

Modes:

- ``starttls``: port-587 style. STARTTLS required before anything else, AUTH offered only
  after it (RFC 3207, RFC 4954 section 4).
- ``tls``: port-465 style, TLS from the first byte (RFC 8314).
- ``plain-auth``: a misconfigured or hostile relay that offers AUTH without STARTTLS. Our
  client must never send credentials there; `auth_attempts` shows whether it did.

Every mode requires AUTH before MAIL FROM. Fault injection is thread-safe and may change while
the relay runs: `fail_data`, `reject_rcpt`, `drop_mid_data`, `slow_data`, `reply_at`,
`stop` / `start`.

`reply_at(stage, reply, count)` answers with arbitrary bytes (a Latin-1 text, invalid UTF-8, any
code) at any SMTP stage: the greeting, EHLO, AUTH, MAIL FROM, RCPT TO, DATA (the 354) and the
end of DATA (the final reply). `canned_replies` lists what was really sent.

What the relay saw: `mails`, `attempts` (every DATA and its outcome), `auth_attempts` (with
whether the session was encrypted at that moment), `cleartext` / `cleartext_auth_commands`
(what clients sent before TLS, to prove credentials never cross the wire unencrypted) and
`connections`.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.harness._service import Service
from tests.harness.pki import TestPKI
from tests.harness.ports import LOOPBACK, free_port

log = logging.getLogger(__name__)

RelayMode = Literal["starttls", "tls", "plain-auth"]
MODES: tuple[RelayMode, ...] = ("starttls", "tls", "plain-auth")

ReplyStage = Literal["greeting", "ehlo", "auth", "mail", "rcpt", "data", "end"]
REPLY_STAGES: tuple[ReplyStage, ...] = ("greeting", "ehlo", "auth", "mail", "rcpt", "data", "end")
# The first digit of the reply a stage gives when it goes on (RFC 5321 4.2.1): DATA's is 354.
_GO_ON = {stage: b"3" if stage == "data" else b"2" for stage in REPLY_STAGES}


@dataclass(frozen=True)
class ReceivedMail:
    """A message the relay accepted with 250 after DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message: EmailMessage
    received_at: datetime.datetime
    tls: bool = False
    auth_user: str | None = None

    @property
    def message_id(self) -> str | None:
        value = self.message["Message-ID"]
        return str(value) if value is not None else None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange that reached the authenticator (credentials were sent)."""

    mechanism: str
    username: str
    success: bool
    tls: bool
    tls_version: str | None
    at: datetime.datetime


@dataclass(frozen=True)
class DataAttempt:
    """One DATA transaction and what the relay did with it."""

    outcome: Literal["accepted", "failed", "dropped"]
    reply: str | None
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str | None
    at: datetime.datetime


@dataclass
class _Faults:
    data_failures: int = 0
    data_reply: str = "451 4.3.0 Try again later"
    drops: int = 0
    drop_stores: bool = False
    slow: int = 0
    slow_seconds: float = 0.0
    rcpt_rejects: dict[str, str] = field(default_factory=dict)
    # Per stage: canned replies still to give, one per command, in order.
    canned: dict[str, list[bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class CannedReply:
    """A reply `reply_at` made the relay send, and whether the stage went on behind it."""

    stage: ReplyStage
    reply: bytes
    went_on: bool
    at: datetime.datetime


def _goes_on(stage: ReplyStage, reply: bytes) -> bool:
    """A canned reply below 400 lets the stage really happen (only its reply line is swapped);
    4xx and 5xx refuse the command."""
    return int(reply[:3]) < 400


def _shown(reply: bytes) -> str:
    """A raw reply as the relay's records show it (non-ASCII bytes as \\xNN)."""
    return reply.decode("ascii", "backslashreplace")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _still_open(transport: asyncio.Transport | None) -> bool:
    """Whether a selector transport still holds its socket (it drops it in connection_lost,
    which runs a turn after `abort`)."""
    return transport is not None and getattr(transport, "_sock", None) is not None


def _transport_tls(server: SMTP) -> tuple[bool, str | None]:
    """Whether the session is encrypted now, for STARTTLS and implicit TLS alike."""
    transport = server.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return False, None
    version: str | None = ssl_object.version()
    return True, version


class _RelaySMTP(SMTP):
    """aiosmtpd's SMTP with a connection hook, and AUTH over implicit TLS or (hostile) none."""

    def __init__(self, relay: Relay, *, allow_auth_without_starttls: bool, **kwargs: Any):
        super().__init__(relay._handler, **kwargs)
        self._relay = relay
        self._relay_connection = 0
        # A canned reply waiting to replace the next line of its stage's "go on" class.
        self._swap: tuple[ReplyStage, bytes] | None = None
        self._close_after_push = False
        if allow_auth_without_starttls:
            # aiosmtpd only knows STARTTLS as "TLS" and calls warnings.warn (an error under
            # pytest's filterwarnings=error) when auth_require_tls=False is passed in. Implicit
            # TLS is encrypted from the first byte; plain-auth mode is hostile on purpose.
            self._auth_require_tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            self._relay._connection_made(self)
            # The greeting is the first line this session pushes (from _handle_client).
            reply = self._relay._take_reply("greeting")
            if reply is not None:
                self._swap = ("greeting", reply)
                # A refused greeting ends the session, as a relay that is shutting down does.
                self._close_after_push = not _goes_on("greeting", reply)

    async def push(self, status: str | bytes) -> None:
        line = (
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
            if isinstance(status, str)
            else status
        )
        swap, self._swap = self._swap, None
        if swap is not None:
            stage, reply = swap
            if not self._close_after_push and line[:1] != _GO_ON[stage]:
                self._swap = swap  # not the line it replaces (e.g. an AUTH challenge)
            else:
                # Keep the original's separator: "250-" continues a multi-line reply (EHLO).
                line = reply[:3] + line[3:4] + reply[4:] if len(line) > 3 else reply
                self._relay._record_canned(stage, reply, not self._close_after_push)
        await super().push(line)
        if self._close_after_push and swap is not None:
            self._close_after_push = False
            if self.transport is not None:
                self.transport.close()

    async def _canned(self, stage: ReplyStage) -> bool:
        """Arm or send a canned reply for this command; True when it answered the command."""
        reply = self._relay._take_reply(stage)
        if reply is None:
            return False
        if _goes_on(stage, reply):
            self._swap = (stage, reply)
            return False
        self._relay._record_canned(stage, reply, False)
        await super().push(reply)
        return True

    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._canned("ehlo"):
            await super().smtp_EHLO(hostname)
        self._swap = None

    async def smtp_AUTH(self, arg: str) -> None:
        if not await self._canned("auth"):
            await super().smtp_AUTH(arg)
        self._swap = None

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._canned("mail"):
            await super().smtp_MAIL(arg)
        self._swap = None

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._canned("rcpt"):
            await super().smtp_RCPT(arg)
        self._swap = None

    async def smtp_DATA(self, arg: str) -> None:
        # Only the 354 is swapped; the final reply is the handler's ("end").
        if not await self._canned("data"):
            await super().smtp_DATA(arg)
        self._swap = None

    def data_received(self, data: bytes) -> None:
        # Before STARTTLS (or always, on the plain-auth relay) this is what crossed the wire in
        # clear text. After STARTTLS the TLS layer delivers decrypted data here: not recorded.
        if self._relay.mode != "tls" and self._tls_protocol is None:
            self._relay._record_cleartext(self, data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._relay._connection_lost(self)
        super().connection_lost(error)


class _RelayController(Controller):
    def __init__(self, relay: Relay, **kwargs: Any) -> None:
        self._relay = relay
        super().__init__(relay._handler, **kwargs)

    def factory(self) -> SMTP:
        return _RelaySMTP(
            self._relay,
            allow_auth_without_starttls=self._relay.mode != "starttls",
            **self.SMTP_kwargs,
        )


class _Handler:
    """aiosmtpd hooks; every method runs on the relay's event loop thread."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """SASL XOAUTH2 (as Microsoft 365 and Gmail speak it): base64 of
        "user=U\x01auth=Bearer TOKEN\x01\x01"; aiosmtpd finds auth_* methods by name."""
        import base64

        try:
            fields = base64.b64decode(args[1]).decode().split("\x01")
            user = fields[0].removeprefix("user=")
            token = fields[1].removeprefix("auth=Bearer ")
        except (IndexError, ValueError):
            return AuthResult(success=False, handled=False)
        return self.relay._authenticate_token(server, user, token)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.relay._rcpt_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str | bytes:
        canned = self.relay._take_reply("end")
        data = bytes(envelope.original_content or b"")
        if canned is not None:
            went_on = _goes_on("end", canned)
            self.relay._record_canned("end", canned, went_on)
            if went_on:
                self.relay._record_mail(server, session, envelope, data)
            else:
                self.relay._record_attempt("failed", _shown(canned), envelope, data)
            # aiosmtpd's push takes bytes as they are: the reply need not be text at all.
            return canned
        action, reply = self.relay._data_action()
        if action == "drop":
            self.relay._record_drop(server, session, envelope, data)
            # Close without a reply, as a relay that crashed (or timed out) after reading the
            # message does. connection_lost then cancels this coroutine.
            if server.transport is not None:
                server.transport.close()
            await asyncio.Event().wait()
        if action == "fail":
            self.relay._record_attempt("failed", reply, envelope, data)
            return reply
        mail = self.relay._record_mail(server, session, envelope, data)
        if action == "slow":
            # Stored, but the 250 comes late: a client that gives up first will retry and
            # deliver a duplicate (aiosmtplib's one timeout also bounds the wait for the reply
            # to the end of DATA).
            await asyncio.sleep(float(reply))
        return f"250 2.0.0 OK queued as {mail.received_at.timestamp():.6f}"


class Relay(Service):
    """A real SMTP submission server on 127.0.0.1, in its own thread."""

    def __init__(
        self,
        work_dir: Path,
        pki: TestPKI | None = None,
        *,
        mode: RelayMode = "starttls",
        users: dict[str, str] | None = None,
        port: int | None = None,
        save_dir: Path | None = None,
        on_mail: Callable[[ReceivedMail], None] | None = None,
        hostname: str = "localhost",
        timeout: float = 30.0,
        cert_identities: tuple[str, ...] = ("localhost", "127.0.0.1"),
        oauth_tokens: set[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode != "plain-auth" and pki is None:
            raise ValueError(f"mode {mode!r} needs a TestPKI for its certificate")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.mode: RelayMode = mode
        self.pki = pki
        self.users = dict(users or {})
        self.host = LOOPBACK
        self.port = free_port() if port is None else port
        self.save_dir = save_dir
        self.on_mail = on_mail
        self.hostname = hostname
        self.timeout = timeout
        # The names its certificate is valid for (a mismatch test passes others).
        self.cert_identities = cert_identities
        # Access tokens the XOAUTH2 mechanism accepts (settable while running).
        self.oauth_tokens: set[str] = set(oauth_tokens or ())
        self.ca_file: Path | None = pki.ca_file(self.work_dir) if pki is not None else None
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._mails: list[ReceivedMail] = []
        self._auth: list[AuthAttempt] = []
        self._attempts: list[DataAttempt] = []
        self._dropped: list[ReceivedMail] = []
        self._callback_errors: list[BaseException] = []
        self._faults = _Faults()
        self._canned: list[CannedReply] = []
        self._connections = 0
        self._open: set[_RelaySMTP] = set()
        self._cleartext: dict[int, bytearray] = {}
        self._saved = 0
        self._controller: _RelayController | None = None
        self._starting = False
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> Relay:
        """Listen on the relay's port (the same one after a `stop`)."""
        if self._controller is not None:
            raise RuntimeError("relay already running")
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": self.hostname,
            "auth_required": True,
            "authenticator": self._authenticate,
            "timeout": self.timeout,
            "ready_timeout": 10.0,
        }
        if self.mode == "starttls":
            assert self.pki is not None
            kwargs |= {
                "tls_context": self.pki.server_ssl_context(self.cert_identities),
                "require_starttls": True,
                "auth_require_tls": True,
            }
        elif self.mode == "tls":
            assert self.pki is not None
            kwargs["ssl_context"] = self.pki.server_ssl_context(self.cert_identities)
        # A new controller (and event loop) each time: aiosmtpd closes the loop on stop.
        controller = _RelayController(self, **kwargs)
        self._starting = True
        try:
            controller.start()
        finally:
            self._starting = False
        self._controller = controller
        return self

    def stop(self) -> None:
        """Close the listener and every open session: the relay is down until `start`."""
        controller = self._controller
        if controller is None:
            return
        self._controller = None
        future = asyncio.run_coroutine_threadsafe(self._close_sessions(controller), controller.loop)
        future.result(timeout=10)
        controller.stop()

    async def _close_sessions(self, controller: _RelayController) -> None:
        # aiosmtpd's stop cancels the tasks and closes the loop without closing the transports
        # still open: a session, a TLS handshake in progress, or a connection accepted a moment
        # ago (the daemon keeps retrying while a test stops the relay). Their sockets would be
        # left for the GC: a ResourceWarning, an error under filterwarnings=error in whichever
        # test runs then. So: stop accepting, then abort every transport this loop owns.
        # `Server.close()` is no use here: on Python 3.11 a connection accepted but not yet
        # given its transport fails in `Server._attach` and leaks exactly such a socket.
        loop = asyncio.get_running_loop()
        if isinstance(controller.server, asyncio.Server):
            for listener in controller.server.sockets:
                loop.remove_reader(listener.fileno())
        for _ in range(100):
            # Accepted connections get their transport on the next turns of the loop.
            await asyncio.sleep(0)
            # The selector loop's fd -> transport table (private, the same on 3.11 to 3.13):
            # the only list that also holds transports no SMTP session has seen yet.
            live = [t for t in getattr(loop, "_transports", {}).values() if _still_open(t)]
            with self._lock:
                sessions = bool(self._open)
            if not live and not sessions:
                break
            for transport in live:
                transport.abort()
            await asyncio.sleep(0.01)

    def restart(self) -> Relay:
        self.stop()
        return self.start()

    def close(self) -> None:
        """The same as `stop` (what leaving a `with` block calls)."""
        self.stop()

    # -- fault injection -----------------------------------------------------------------------

    def fail_data(self, count: int, code: int = 451, text: str = "4.3.0 Try again later") -> None:
        """Answer the next count DATA transactions with ``code text`` (4xx or 5xx)."""
        with self._lock:
            self._faults.data_failures = count
            self._faults.data_reply = f"{code} {text}"

    def reject_rcpt(self, address: str, code: int = 550, text: str = "5.1.1 No such user") -> None:
        """Refuse RCPT TO for address (case-insensitive) until `clear_faults`."""
        with self._lock:
            self._faults.rcpt_rejects[address.lower()] = f"{code} {text}"

    def drop_mid_data(self, count: int, *, store: bool = False) -> None:
        """For the next count transactions, read the whole message, then close without a reply.

        With store=True the relay keeps the message first (it appears in `mails`), as a relay
        that queued the mail and then lost the connection does: the client cannot tell, and
        its retry produces a duplicate with the same Message-ID.
        """
        with self._lock:
            self._faults.drops = count
            self._faults.drop_stores = store

    def slow_data(self, count: int, seconds: float) -> None:
        """For the next count transactions, store the message, then wait seconds before the 250."""
        with self._lock:
            self._faults.slow = count
            self._faults.slow_seconds = seconds

    def reply_at(self, stage: ReplyStage, reply: bytes, count: int = 1) -> None:
        """Answer the next `count` commands of `stage` with `reply`, byte for byte.

        `reply` starts with a three-digit code; the rest may be any bytes but CR and LF
        (Latin-1 text, invalid UTF-8, NUL...). Below 400 the stage really happens and only its
        reply line is replaced (the first line of EHLO, keeping the extensions; the 354 of
        DATA; the final reply, after the mail was stored). 4xx and 5xx refuse the command; a
        refused greeting also closes the connection. Stages: greeting, ehlo, auth, mail, rcpt,
        data, end (the reply to the message itself).
        """
        if stage not in REPLY_STAGES:
            raise ValueError(f"stage must be one of {REPLY_STAGES}, not {stage!r}")
        if not reply[:3].isdigit() or b"\r" in reply or b"\n" in reply:
            raise ValueError(f"a reply is a three-digit code and text without CR/LF: {reply!r}")
        with self._lock:
            self._faults.canned.setdefault(stage, []).extend([reply] * count)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    # -- inspection ----------------------------------------------------------------------------

    @property
    def mails(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._mails)

    @property
    def canned_replies(self) -> list[CannedReply]:
        """The replies `reply_at` made the relay send, in order."""
        with self._lock:
            return list(self._canned)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth)

    @property
    def attempts(self) -> list[DataAttempt]:
        """Every DATA transaction: accepted, failed by `fail_data`, dropped by `drop_mid_data`."""
        with self._lock:
            return list(self._attempts)

    @property
    def dropped(self) -> list[ReceivedMail]:
        """Messages read completely before a `drop_mid_data` close, stored or not."""
        with self._lock:
            return list(self._dropped)

    @property
    def connections(self) -> int:
        """Client connections accepted so far (across stop/start)."""
        with self._lock:
            return self._connections

    @property
    def cleartext(self) -> list[bytes]:
        """Per client connection, the bytes it sent unencrypted (before STARTTLS; on the
        plain-auth relay, everything). Empty lists in implicit TLS mode."""
        with self._lock:
            return [bytes(self._cleartext[key]) for key in sorted(self._cleartext)]

    @property
    def cleartext_auth_commands(self) -> list[bytes]:
        """AUTH command lines sent unencrypted. With AUTH PLAIN's initial response such a line
        carries the password (base64): our client must never produce one."""
        lines = [line for data in self.cleartext for line in data.split(b"\r\n")]
        return [line for line in lines if line.upper().split(b" ", 1)[0] == b"AUTH"]

    @property
    def callback_errors(self) -> list[BaseException]:
        with self._lock:
            return list(self._callback_errors)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """Block until at least n mails arrived; return them all. TimeoutError otherwise."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._mails) >= n, timeout):
                got = [(m.rcpt_tos, m.subject) for m in self._mails]
                raise TimeoutError(
                    f"relay got {len(self._mails)} of {n} mails within {timeout} s: {got}; "
                    f"attempts={len(self._attempts)} auth={self._auth}"
                )
            return list(self._mails)

    # -- called from the relay thread ----------------------------------------------------------

    def _connection_made(self, server: _RelaySMTP) -> None:
        with self._lock:
            self._open.add(server)
            if not self._starting:  # Controller.start's own probe connection is not a client
                self._connections += 1
            server._relay_connection = self._connections

    def _record_cleartext(self, server: _RelaySMTP, data: bytes) -> None:
        with self._lock:
            if not self._starting:
                self._cleartext.setdefault(server._relay_connection, bytearray()).extend(data)

    def _connection_lost(self, server: _RelaySMTP) -> None:
        with self._lock:
            self._open.discard(server)

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        tls, version = _transport_tls(server)
        if isinstance(auth_data, LoginPassword):
            username = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
        else:
            username, password = "", None
        success = password is not None and self.users.get(username) == password
        with self._lock:
            self._auth.append(AuthAttempt(mechanism, username, success, tls, version, _now()))
        return AuthResult(success=success, handled=False, auth_data=username)

    def _authenticate_token(self, server: SMTP, username: str, token: str) -> AuthResult:
        tls, version = _transport_tls(server)
        success = token in self.oauth_tokens
        with self._lock:
            self._auth.append(AuthAttempt("XOAUTH2", username, success, tls, version, _now()))
        return AuthResult(success=success, handled=False, auth_data=username)

    def _take_reply(self, stage: ReplyStage) -> bytes | None:
        with self._lock:
            if self._starting:  # Controller.start's own probe connection is not a client
                return None
            queue = self._faults.canned.get(stage)
            return queue.pop(0) if queue else None

    def _record_canned(self, stage: ReplyStage, reply: bytes, went_on: bool) -> None:
        with self._lock:
            self._canned.append(CannedReply(stage, reply, went_on, _now()))

    def _rcpt_reply(self, address: str) -> str | None:
        with self._lock:
            return self._faults.rcpt_rejects.get(address.lower())

    def _data_action(self) -> tuple[Literal["accept", "fail", "drop", "slow"], str]:
        with self._lock:
            faults = self._faults
            if faults.drops > 0:
                faults.drops -= 1
                return "drop", ""
            if faults.data_failures > 0:
                faults.data_failures -= 1
                return "fail", faults.data_reply
            if faults.slow > 0:
                faults.slow -= 1
                return "slow", str(faults.slow_seconds)
            return "accept", ""

    def _parse(
        self, server: SMTP, session: Session, envelope: Envelope, data: bytes
    ) -> ReceivedMail:
        tls, _version = _transport_tls(server)
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message=message,
            received_at=_now(),
            tls=tls,
            auth_user=session.auth_data if isinstance(session.auth_data, str) else None,
        )

    def _record_attempt(
        self,
        outcome: Literal["accepted", "failed", "dropped"],
        reply: str | None,
        envelope: Envelope,
        data: bytes,
    ) -> None:
        message = email.message_from_bytes(data, policy=email.policy.default)
        message_id = message["Message-ID"]
        attempt = DataAttempt(
            outcome,
            reply,
            envelope.mail_from or "",
            tuple(envelope.rcpt_tos),
            str(message_id) if message_id is not None else None,
            _now(),
        )
        with self._lock:
            self._attempts.append(attempt)

    def _record_drop(self, server: SMTP, session: Session, envelope: Envelope, data: bytes) -> None:
        mail = self._parse(server, session, envelope, data)
        with self._lock:
            store = self._faults.drop_stores
            self._dropped.append(mail)
        self._record_attempt("dropped", None, envelope, data)
        if store:
            self._store(mail)

    def _record_mail(
        self, server: SMTP, session: Session, envelope: Envelope, data: bytes
    ) -> ReceivedMail:
        mail = self._parse(server, session, envelope, data)
        self._record_attempt("accepted", "250", envelope, data)
        self._store(mail)
        return mail

    def _store(self, mail: ReceivedMail) -> None:
        with self._arrived:
            self._mails.append(mail)
            self._saved += 1
            number = self._saved
            self._arrived.notify_all()
        if self.save_dir is not None:
            (self.save_dir / f"{number:04d}.eml").write_bytes(mail.data)
        if self.on_mail is not None:
            try:
                self.on_mail(mail)
            except Exception as error:  # a broken callback must not turn into an SMTP reply
                log.exception("relay on_mail callback failed")
                with self._lock:
                    self._callback_errors.append(error)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Relay {self.mode} {self.host}:{self.port} {state} mails={len(self._mails)}>"
