"""The relay checks: TCP, STARTTLS offered (security = "starttls"), the certificate verified
with the daemon's TLS policy, what EHLO advertised (SIZE, PIPELINING, AUTH, SMTPUTF8), AUTH
accepted; then QUIT. No mail is ever sent, and credentials only ever go over verified TLS.

The session is driven step by step (not through SmtpSubmitter) so each step gets its own line;
the login and the QUIT are the submitter's own (`agent.submit.login`, `quit_session`), so the
doctor logs in exactly as the daemon does.
"""

from __future__ import annotations

import datetime
import re
import ssl
from email.utils import parsedate_to_datetime

import aiosmtplib
from cryptography import x509

from agent.doctor.certs import (
    Peer,
    cert_ok,
    diagnostic_context,
    find_exception,
    load_der,
    tls_failure,
)
from agent.doctor.provider import provider_checks
from agent.doctor.result import Check, Facts, Group, fail, ok, size_text, utc_now, warn
from agent.errors import DeliveryError
from agent.settings import Settings
from agent.submit import ehlo_name, login, quit_session, token_source
from agent.tls import tls_context

_EHLO_FIX = (
    "set this gateway's fully qualified name in the [smtp] section, e.g. "
    'smtp.ehlo_name = "gw1.example.com"'
)

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


def extensions_text(ext: dict[str, str]) -> str:
    """What EHLO advertised, as aiosmtplib's esmtp_extensions, and which of SIZE, PIPELINING,
    AUTH and SMTPUTF8 it did not."""
    parts = []
    if "size" in ext:
        size = ext["size"].strip()
        parts.append(f"SIZE {size_text(int(size))}" if size.isdigit() and int(size) else "SIZE")
    for key in ("pipelining", "8bitmime", "smtputf8", "chunking"):
        if key in ext:
            parts.append(key.upper())
    if "auth" in ext:
        parts.append(f"AUTH {ext['auth'].strip().upper()}")
    missing = [k.upper() for k in ("size", "pipelining", "auth", "smtputf8") if k not in ext]
    text = ", ".join(parts) or "nothing"
    return text + (f"; not {', '.join(missing)}" if missing else "")


def ehlo_name_check(name: str, configured: bool) -> Check:
    """Is the name we give in EHLO a fully qualified domain name (RFC 5321 4.1.1.1)? Without
    smtp.ehlo_name it is socket.getfqdn(), which is `localhost` on a gateway whose host name
    has no domain: the relay writes `Received: from localhost`, spam filters score it (rspamd
    HFILTER_HELO_5) and strict relays refuse the greeting."""
    source = "smtp.ehlo_name" if configured else "this host's name; smtp.ehlo_name is empty"
    label = name.lower().rstrip(".")
    if "." not in label or label.startswith("localhost"):
        return warn(
            "relay EHLO name",
            f"{name!r} ({source}) is not a fully qualified name: relays record it, spam "
            "filters score it and strict relays refuse it",
            _EHLO_FIX,
        )
    return ok("relay EHLO name", f"{name} ({source})")


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:200]


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
        tls_context=diagnostic_context(),
    )
    try:
        await smtp.connect()
        if not implicit:
            await smtp.ehlo()
            await smtp.starttls()
        ssl_object = smtp.get_transport_info("ssl_object")
        cert = load_der(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        await quit_session(smtp, timeout)
        return cert
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return None
    finally:
        smtp.close()


async def relay_checks(settings: Settings, timeout: float) -> Group:
    """The relay session's checks, then the provider's (limits in effect, AUTH method, OAuth
    secret expiry), which need no network and so show even when the relay is down."""
    group = await _relay_session(settings, timeout)
    group.checks.extend(provider_checks(settings))
    return group


async def _relay_session(settings: Settings, timeout: float) -> Group:
    """relay, relay STARTTLS, relay TLS, relay EHLO, relay AUTH: each step only if the one
    before it passed; the greeting's date and our address go into the facts."""
    s = settings.smtp
    ehlo = ehlo_name(s)
    implicit = s.security == "tls"
    where = f"{s.host}:{s.port}"
    facts = Facts()
    peer = Peer("relay", s.host, "smtp.host", "smtp.ca_file", s.ca_file, "faultmail will not send")
    named = ehlo_name_check(ehlo, bool(s.ehlo_name))
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
        return Group(
            [named, fail("relay EHLO", f"cannot use {ehlo!r} as the EHLO name: {exc}", _EHLO_FIX)]
        )
    checks: list[Check] = [named]
    try:
        try:
            greeting = await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            checks.append(
                fail(
                    "relay",
                    f"{where} refused the session: {exc.code} {exc.message}",
                    "the relay does not accept this gateway: check smtp.host/smtp.port and the "
                    "relay's client restrictions",
                )
            )
            return Group(checks, facts)
        except (aiosmtplib.SMTPException, OSError) as exc:
            if implicit and find_exception(exc, ssl.SSLError) is not None:
                checks.append(ok("relay", f"{where} accepts connections (implicit TLS)"))
                cert = await _relay_certificate(settings, ehlo, timeout)
                checks.append(tls_failure("relay TLS", peer, exc, cert, utc_now()))
                return Group(checks, facts)
            timed_out = isinstance(exc, aiosmtplib.SMTPTimeoutError)
            checks.append(
                fail(
                    "relay",
                    f"no answer from {where} within {timeout:g} s"
                    if timed_out
                    else f"cannot connect to {where}: {_short(exc)}",
                    "check smtp.host and smtp.port, that the relay is up, and the firewall "
                    f"(faultmail submits on {s.port} with {s.security})",
                )
            )
            return Group(checks, facts)
        facts.seen_at = utc_now()
        first_line = greeting.message.splitlines()[0] if greeting.message else ""
        stamp = greeting_time(greeting.message)
        if stamp is not None:
            facts.peer_time, facts.peer_time_text = stamp
        sockname = smtp.get_transport_info("sockname")
        if isinstance(sockname, tuple) and sockname:
            facts.local_address = str(sockname[0])
        mode = "implicit TLS" if implicit else "STARTTLS"
        checks.append(ok("relay", f"{where} answers ({mode}): {greeting.code} {first_line}"[:140]))
        refused = await _ehlo(smtp, ehlo)
        if refused is not None:
            checks.append(refused)
            return Group(checks, facts)
        if not implicit:
            if not smtp.supports_extension("starttls"):
                checks.append(
                    fail(
                        "relay STARTTLS",
                        "the relay does not offer STARTTLS; faultmail will not send "
                        f"(it advertised: {extensions_text(smtp.esmtp_extensions)})",
                        "enable STARTTLS on the relay's submission port, or use its implicit-TLS "
                        'port: smtp.port = 465 with security = "tls"',
                    )
                )
                await quit_session(smtp, timeout)
                return Group(checks, facts)
            checks.append(ok("relay STARTTLS", "offered"))
            try:
                await smtp.starttls()
            except (aiosmtplib.SMTPException, OSError) as exc:
                smtp.close()
                cert = await _relay_certificate(settings, ehlo, timeout)
                checks.append(tls_failure("relay TLS", peer, exc, cert, utc_now()))
                return Group(checks, facts)
        ssl_object = smtp.get_transport_info("ssl_object")
        if ssl_object is None:  # cannot happen: never log in without TLS
            checks.append(fail("relay TLS", "the connection is not encrypted", _EHLO_FIX))
            return Group(checks, facts)
        cert = load_der(ssl_object.getpeercert(binary_form=True))
        if cert is not None:
            facts.certificates.append(("relay", cert))
            checks.append(cert_ok("relay TLS", peer, cert, ssl_object.version(), utc_now()))
        refused = await _ehlo(smtp, ehlo)
        if refused is not None:
            checks.append(refused)
            return Group(checks, facts)
        advertised = f"EHLO {ehlo}: {extensions_text(smtp.esmtp_extensions)}"
        if not smtp.supports_extension("auth"):
            checks.append(
                fail(
                    "relay EHLO",
                    f"{advertised}; no AUTH even over TLS, and faultmail always logs in",
                    "enable SMTP AUTH for submission on the relay (for Microsoft 365: "
                    "authenticated SMTP for this mailbox)",
                )
            )
            await quit_session(smtp, timeout)
            return Group(checks, facts)
        checks.append(ok("relay EHLO", advertised))
        checks.append(await _relay_login(smtp, settings))
        await quit_session(smtp, timeout)
        return Group(checks, facts)
    finally:
        smtp.close()


async def _ehlo(smtp: aiosmtplib.SMTP, ehlo: str) -> Check | None:
    """EHLO (again after STARTTLS); a FAIL check when the relay refuses it."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        return fail(
            "relay EHLO", f"the relay refused EHLO {ehlo}: {exc.code} {exc.message}", _EHLO_FIX
        )
    return None


async def _relay_login(smtp: aiosmtplib.SMTP, settings: Settings) -> Check:
    """Log in with the daemon's own code (password or XOAUTH2); the relay's answer, quoted."""
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
        mechanism = await login(smtp, s, tokens)
    except DeliveryError as exc:  # the token source itself failed
        return fail("relay AUTH", f"no OAuth token for {s.username}: {_short(exc)}", fix)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return fail(
            "relay AUTH",
            f"the relay refused the login as {s.username}: {exc.code} {exc.message}",
            fix,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        return fail("relay AUTH", f"login as {s.username} failed: {_short(exc)}", fix)
    return ok("relay AUTH", f"accepted for {s.username} ({mechanism}; no mail sent)")
