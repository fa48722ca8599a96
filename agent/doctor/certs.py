"""Certificate wording shared by the broker and relay checks: days to expiry, and a TLS
failure turned into what is wrong (expired, not yet valid, wrong name, untrusted CA) and the
setting that fixes it.

Pure functions of the certificate, the exception and `now` (passed in, so tests need no clock),
plus the two helpers that read a peer's certificate when verification refused it.
"""

from __future__ import annotations

import contextlib
import datetime
import ssl
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.doctor.result import Check, fail, ok, warn

# A certificate closer than this to its end is a WARN.
CERT_WARN_DAYS = 14

# OpenSSL's X509_V_ERR_* codes that SSLCertVerificationError.verify_code carries.
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True)
class Peer:
    """Who a TLS check talks about and which keys fix it."""

    who: str  # "relay" / "broker"
    host: str
    host_key: str
    ca_key: str
    ca_file: str
    consequence: str  # what happens until it is fixed


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is for (its CN when it has no SAN)."""
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


def issuer(cert: x509.Certificate) -> str:
    """The issuer's common name (or organisation) as an operator would recognise it."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = cert.issuer.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return cert.issuer.rfc4514_string() or "unknown"


def _days(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds() // 86400)


_E = TypeVar("_E", bound=BaseException)


def find_exception(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of `kind` in exc's cause/context chain (aiosmtplib and paho wrap
    the ssl error that says what went wrong)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def cert_ok(
    name: str,
    peer: Peer,
    cert: x509.Certificate,
    version: str | None,
    now: datetime.datetime,
) -> Check:
    """A verified certificate: OK with days to expiry, WARN within CERT_WARN_DAYS of its end."""
    left = cert.not_valid_after_utc - now
    expiry = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    detail = (
        f"certificate valid for {peer.host}, expires in {_days(left)} days ({expiry}); "
        f"issuer {issuer(cert)}{f', {version}' if version else ''}"
    )
    if _days(left) < CERT_WARN_DAYS:
        return warn(
            name,
            detail,
            f"renew the {peer.who}'s certificate before {expiry}: then {peer.consequence}",
        )
    return ok(name, detail)


def tls_failure(
    name: str,
    peer: Peer,
    exc: BaseException,
    cert: x509.Certificate | None,
    now: datetime.datetime,
) -> Check:
    """A FAIL that says what is wrong with the certificate (or the handshake) and the fix.

    cert: the peer's certificate as read without verification (None when even that failed).
    """
    verify = find_exception(exc, ssl.SSLCertVerificationError)
    code = verify.verify_code if verify is not None else None
    message = (verify.verify_message if verify is not None else "") or str(exc)
    if code == _CERT_HAS_EXPIRED or "expired" in message:
        when = ""
        if cert is not None:
            ago = _days(now - cert.not_valid_after_utc)
            when = f" on {cert.not_valid_after_utc:%Y-%m-%d} ({ago} days ago)"
        return fail(
            name,
            f"the {peer.who}'s certificate expired{when}; {peer.consequence} until it is renewed",
            f"renew the {peer.who}'s certificate (if it is not really expired, this gateway's "
            "clock is wrong: timedatectl set-ntp true)",
        )
    if code == _CERT_NOT_YET_VALID or "not yet valid" in message:
        start = f" before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC" if cert else ""
        return fail(
            name,
            f"the {peer.who}'s certificate is not valid yet{start}: our clock says "
            f"{now:%Y-%m-%d %H:%M} UTC",
            "set this gateway's clock (timedatectl set-ntp true, or chrony); if the clock is "
            f"right, the {peer.who}'s certificate was issued with a wrong start date",
        )
    if (
        code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH)
        or "mismatch" in message
        or "doesn't match" in message
    ):
        names = ", ".join(cert_names(cert)) if cert is not None else "other names"
        return fail(
            name,
            f"the {peer.who}'s certificate is for {names}, not {peer.host}; {peer.consequence}",
            f"set {peer.host_key} to a name the certificate lists ({names}), or give the "
            f"{peer.who} a certificate for {peer.host}",
        )
    if verify is not None:
        by = f" (issuer: {issuer(cert)})" if cert is not None else ""
        if peer.ca_file:
            fix = (
                f"{peer.ca_key} = {peer.ca_file} does not contain the CA that issued the "
                f"{peer.who}'s certificate{by}: point {peer.ca_key} at that CA"
            )
        else:
            fix = (
                f"set {peer.ca_key} to the CA that issued the {peer.who}'s certificate{by}, "
                "or install that CA in the system trust store"
            )
        return fail(
            name,
            f"the {peer.who}'s certificate is not trusted: {message}; {peer.consequence}",
            fix,
        )
    return fail(
        name,
        f"TLS handshake with the {peer.who} failed: {message}",
        f"the {peer.who} must speak TLS 1.2 or later on this port with a certificate for "
        f"{peer.host}; check {peer.host_key} and the port",
    )


def diagnostic_context(client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    """Only to read the certificate of a peer that failed verification, to explain why.
    Nothing but a handshake (and, for SMTP, EHLO/STARTTLS/QUIT) ever goes over it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client_cert:
        with contextlib.suppress(ssl.SSLError, OSError):
            ctx.load_cert_chain(client_cert, client_key or None)
    return ctx


def load_der(der: bytes | None) -> x509.Certificate | None:
    """The certificate in DER bytes, or None when there is none or it does not parse."""
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None
