"""submit: the allowlist is checked again before RCPT TO; relay errors are translated by type
and their text made valid before it leaves the module."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest

from agent.errors import DeliveryError, PolicyRefusal, TransientDeliveryError
from agent.settings import Allowlist, Settings
from agent.submit import SmtpSubmitter, _step


def test_recipient_outside_allowlist_is_refused_before_connecting(settings: Settings) -> None:
    """A queued mail for an address no longer allowlisted is refused; no connection is made."""
    # mail.example.com does not resolve here: reaching the network would raise something else.
    sub = SmtpSubmitter(settings.smtp, Allowlist(["example.com"], []), "gw.test")
    with pytest.raises(PolicyRefusal, match=r"evil@other\.test"):
        asyncio.run(sub.submit("gw@example.com", ["ops@example.com", "evil@other.test"], b"x"))


def _translate(exc: BaseException, step: str, permanent: bool = False) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught, _step(step, fivexx_is_permanent=permanent):
        raise exc
    return caught.value


def test_a_latin1_reply_leaves_submit_as_valid_text_with_the_byte_escaped() -> None:
    """A 451 whose text had a raw 0xE4 (aiosmtplib: a lone surrogate) becomes valid text
    with the byte shown as \\xe4: SQLite and the journal can take it."""
    message = b"4.3.0 Bitte sp\xe4ter versuchen".decode("utf-8", "surrogateescape")
    err = _translate(aiosmtplib.SMTPDataError(451, message), "data", permanent=True)
    assert isinstance(err, TransientDeliveryError) and err.code == 451
    assert err.detail == "4.3.0 Bitte sp\\xe4ter versuchen"
    str(err).encode("utf-8")  # must not raise


def test_failures_are_kinds_by_exception_type() -> None:
    """TLS, login, timeouts and unreachable relays are told apart by type, whatever the text."""
    wrapped = aiosmtplib.SMTPConnectError("Error connecting")
    wrapped.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    cases: list[tuple[BaseException, str, str]] = [
        (wrapped, "connect", "tls"),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 STARTTLS bad"), "auth", "auth"),
        (aiosmtplib.SMTPReadTimeoutError("Timed out"), "data", "timeout"),
        (aiosmtplib.SMTPConnectTimeoutError("STARTTLS"), "connect", "timeout"),
        (aiosmtplib.SMTPConnectResponseError(554, "no service"), "connect", "connect"),
        (aiosmtplib.SMTPHeloError(501, "bad EHLO"), "starttls", "connect"),
        (aiosmtplib.SMTPServerDisconnected("STARTTLS lost"), "data", "connect"),
        (ConnectionRefusedError(111, "refused"), "connect", "connect"),
        # The relay does not offer STARTTLS: a plain SMTPException at the starttls step.
        (aiosmtplib.SMTPException("extension not supported by server."), "starttls", "tls"),
        (aiosmtplib.SMTPResponseException(454, "4.7.0 TLS not available"), "starttls", "tls"),
        (aiosmtplib.SMTPSenderRefused(451, "STARTTLS later", "gw@x"), "mail", "smtp"),
    ]
    for exc, step, kind in cases:
        assert _translate(exc, step).kind == kind, (exc, step)


def test_only_a_5xx_reply_at_a_mail_step_is_permanent() -> None:
    """5xx to MAIL, RCPT or DATA makes the mail dead; 5xx to the greeting or login does not."""
    assert not _translate(aiosmtplib.SMTPDataError(554, "spam"), "data", True).retryable
    assert _translate(aiosmtplib.SMTPDataError(451, "later"), "data", True).retryable
    assert _translate(aiosmtplib.SMTPConnectResponseError(554, "x"), "connect").retryable
    assert _translate(aiosmtplib.SMTPAuthenticationError(535, "no"), "auth").retryable
