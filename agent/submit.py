"""Submission to the relay with aiosmtplib: TLS always, certificates verified, AUTH always.

aiosmtplib's exceptions are translated here, once, into TransientDeliveryError or
PermanentDeliveryError; nothing from aiosmtplib travels further. Nor does its text unchecked:
replies are outside text (aiosmtplib decodes them with surrogateescape, so a Latin-1 byte
becomes a lone surrogate that SQLite and the journal refuse), made valid by `reply_text` before
they leave this module.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiosmtplib
import aiosmtplib.email

from agent.errors import PermanentDeliveryError, PolicyRefusal, TransientDeliveryError
from agent.oauth import ClientCredentials, CommandToken, FileToken, TokenSource
from agent.sanitize import reply_text
from agent.tls import tls_context

if TYPE_CHECKING:
    from agent.settings import Allowlist, Settings, SmtpSettings


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The relay's final answer to DATA, and recipients it refused on their own."""

    code: int
    reply: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class Submitter(Protocol):
    """What dispatch needs from a relay client; tests may pass a recording fake."""

    relay: str

    async def submit(
        self, sender: str, recipients: Sequence[str], message: bytes
    ) -> SubmitResult: ...

    async def close(self) -> None: ...

    async def probe(self) -> bool:
        """Cheaply: does the relay accept TCP connections again?"""
        ...


# What kind of failure an exception is, by its type: the first row any exception in its chain
# matches wins (aiosmtplib wraps an SSL error in SMTPConnectError, so causes count). Dispatch
# pauses the whole queue for connect, tls, auth and timeout. Exceptions no row names take the
# kind of the step they happened at (_STEP_KINDS): a plain SMTPException while upgrading is
# the relay not offering STARTTLS, while logging in the relay not offering AUTH.
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ssl.SSLError, "tls"),  # handshake, certificate verification, protocol version
    (aiosmtplib.SMTPAuthenticationError, "auth"),
    (aiosmtplib.SMTPTimeoutError, "timeout"),  # SMTPConnectTimeoutError too
    (TimeoutError, "timeout"),
    (aiosmtplib.SMTPConnectResponseError, "connect"),  # a greeting other than 220
    (aiosmtplib.SMTPHeloError, "connect"),  # EHLO and HELO refused: nothing can be sent
    (aiosmtplib.SMTPConnectError, "connect"),
    (aiosmtplib.SMTPServerDisconnected, "connect"),
    (OSError, "connect"),
)
_STEP_KINDS = {"connect": "connect", "starttls": "tls", "auth": "auth"}


@functools.lru_cache(maxsize=256)
def _quoted(address: str) -> bytes:
    """An address as MAIL FROM / RCPT TO carry it: what SMTP.mail and SMTP.rcpt send, without
    the address parse they repeat for every mail (a twentieth of the daemon's CPU)."""
    return aiosmtplib.email.quote_address(address).encode("ascii")


def _kind(exc: BaseException, step: str) -> str:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cls, kind in _KINDS:
        if any(isinstance(e, cls) for e in chain):
            return kind
    return _STEP_KINDS.get(step, "smtp")


def _text(exc: BaseException) -> str:
    """What the exception says, as valid text (a relay's reply text in most cases)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_text(exc.message)
    return reply_text(str(exc)) or type(exc).__name__


@contextmanager
def _step(step: str, *, fivexx_is_permanent: bool = False) -> Iterator[None]:
    """Translate aiosmtplib errors at one protocol step; the step names the failure."""
    try:
        yield
    except (aiosmtplib.SMTPException, OSError) as exc:
        kind = _kind(exc, step)
        code = exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None
        detail = _text(exc)
        if kind == "auth":
            # Wrong credentials do not make the mail undeliverable: keep it, say what to fix.
            detail = f"relay refused our login: {detail}"
        if fivexx_is_permanent and kind == "smtp" and code is not None and 500 <= code < 600:
            raise PermanentDeliveryError(step, detail, code=code) from None
        raise TransientDeliveryError(step, detail, code=code, kind=kind) from None


class SmtpSubmitter:
    """Reusable, authenticated, TLS-protected connections to the relay: at most
    `smtp.connections` at once, each kept open between mails until close()."""

    def __init__(
        self,
        settings: SmtpSettings,
        allowlist: Allowlist,
        ehlo_name: str,
        tokens: TokenSource | None = None,
    ) -> None:
        self._settings = settings
        self._tokens = tokens if tokens is not None else token_source(settings)
        self._allowlist = allowlist
        self._ehlo_name = ehlo_name
        self._tls = tls_context(settings.ca_file)
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(settings.connections)
        self.relay = f"{settings.host}:{settings.port}"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpSubmitter:
        return cls(settings.smtp, settings.allowlist, ehlo_name(settings.smtp))

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        outsiders = [r for r in recipients if not self._allowlist.allows(r)]
        if outsiders:
            # Checked at startup too; this guards a queue written under an older config.
            raise PolicyRefusal(
                f"recipient(s) {', '.join(outsiders)} are outside policy.allowed_domains / "
                "allowed_recipients; nothing was sent"
            )
        async with self._slots:
            smtp = await self._connection()
            try:
                result = await self._transaction(smtp, sender, recipients, message)
            except (TransientDeliveryError, PermanentDeliveryError) as exc:
                # 421 and broken connections leave the session unusable; a 5xx on a healthy
                # session does not, but a fresh connection costs little at alert rates.
                if exc.code is None or exc.code == 421 or exc.retryable:
                    await quit_session(smtp)
                else:
                    self._idle.append(smtp)
                raise
            except BaseException:
                smtp.close()
                raise
            self._idle.append(smtp)
            return result

    async def _connection(self) -> aiosmtplib.SMTP:
        while self._idle:
            smtp = self._idle.pop()
            if smtp.is_connected:
                return smtp
            smtp.close()
        s = self._settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=self._ehlo_name,
            timeout=s.timeout,
            # Never start_tls=None (aiosmtplib's default): it means "STARTTLS only if the relay
            # offers it", so a relay that does not (or a man in the middle) would get AUTH in clear.
            # STARTTLS is its own step below (start_tls=False here), so a relay that does not
            # offer it is told apart from one that cannot be reached by the step, not by text.
            use_tls=s.security == "tls",
            start_tls=False,
            validate_certs=True,
            tls_context=self._tls,
        )
        try:
            with _step("connect"):
                await smtp.connect()
            if s.security == "starttls":
                with _step("starttls"):
                    await smtp.starttls()
            if smtp.get_transport_info("sslcontext") is None:
                raise TransientDeliveryError(
                    "starttls", "connection is not encrypted; refusing to log in", kind="tls"
                )
            await self._login(smtp)
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _login(self, smtp: aiosmtplib.SMTP) -> None:
        with _step("auth"):
            await login(smtp, self._settings, self._tokens)

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, sender: str, recipients: Sequence[str], message: bytes
    ) -> SubmitResult:
        with _step("mail", fivexx_is_permanent=True):
            reply = await smtp.execute_command(b"MAIL", b"FROM:" + _quoted(sender))
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in recipients:
            try:
                with _step("rcpt", fivexx_is_permanent=True):
                    reply = await smtp.execute_command(b"RCPT", b"TO:" + _quoted(rcpt))
                    if reply.code not in (250, 251):
                        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt)
            except (TransientDeliveryError, PermanentDeliveryError) as exc:
                if exc.code is None:
                    raise
                refused[rcpt] = (exc.code, exc.detail)
        if len(refused) == len(recipients):
            await self._reset(smtp)
            codes = sorted({code for code, _ in refused.values()})
            detail = "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
            if all(500 <= c < 600 for c in codes):
                raise PermanentDeliveryError(
                    "rcpt", f"all recipients refused: {detail}", code=codes[-1]
                )
            raise TransientDeliveryError("rcpt", f"all recipients refused: {detail}", code=codes[0])
        with _step("data", fivexx_is_permanent=True):
            response = await smtp.data(message, timeout=self._settings.data_timeout)
        return SubmitResult(code=response.code, reply=reply_text(response.message), refused=refused)

    @staticmethod
    async def _reset(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()

    async def probe(self) -> bool:
        s = self._settings
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), 3.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()
        return True

    async def close(self) -> None:
        """Quit the idle connections (the dispatcher calls this with none in use)."""
        idle, self._idle = self._idle, []
        for smtp in idle:
            await quit_session(smtp)


async def login(smtp: aiosmtplib.SMTP, settings: SmtpSettings, tokens: TokenSource | None) -> str:
    """AUTH on an encrypted session as smtp.auth says: the password, or an XOAUTH2 token from
    tokens. Returns the mechanism used ("password" / "XOAUTH2").

    The relay's refusal comes out as aiosmtplib raised it, for the caller to translate: the
    submitter at its "auth" step, `faultmail doctor` into a check line that quotes the reply.
    A token source that cannot give a token raises TransientDeliveryError (step "oauth").
    """
    if tokens is None:
        await smtp.login(settings.username, settings.password())
        return "password"
    token = await tokens.token()
    try:
        try:
            await smtp.auth_xoauth2(settings.username, token)
        except aiosmtplib.SMTPAuthenticationError:
            # A revoked or expired token: one fresh token at once, before the refusal counts
            # (a refusal of the fresh one is the login alarm's business).
            tokens.invalidate()
            await smtp.auth_xoauth2(settings.username, await tokens.token())
    except (aiosmtplib.SMTPException, OSError):
        # Fetch a fresh token at the next attempt too.
        tokens.invalidate()
        raise
    return "XOAUTH2"


async def quit_session(smtp: aiosmtplib.SMTP, timeout: float = 2.0) -> None:
    """QUIT politely if still connected (a relay that does not answer is not waited for
    longer than timeout), then close the connection."""
    if smtp.is_connected:
        with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), timeout=timeout)
    smtp.close()


def ehlo_name(settings: SmtpSettings) -> str:
    """What we say in EHLO: smtp.ehlo_name, or this host's fully qualified name."""
    return settings.ehlo_name or socket.getfqdn()


def token_source(settings: SmtpSettings) -> TokenSource | None:
    """The XOAUTH2 token source the settings ask for; None for password AUTH."""
    oauth = settings.oauth
    if settings.auth != "xoauth2" or oauth is None:
        return None
    if oauth.token_url:
        return ClientCredentials(
            oauth.endpoint, oauth.client_id, oauth.client_secret(), oauth.scope, oauth.ca_file
        )
    if oauth.token_file:
        return FileToken(oauth.token_file)
    return CommandToken(oauth.token_command)
