"""doctor.certs: the wording of certificate expiry and of TLS failures (expired, not yet valid,
wrong name, untrusted), with now passed in."""

from __future__ import annotations

import datetime
import ssl

import aiosmtplib
import trustme
from cryptography import x509

from agent.doctor.certs import Peer, cert_ok, tls_failure
from agent.doctor.result import Status

NOW = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.UTC)
RELAY = Peer("relay", "localhost", "smtp.host", "smtp.ca_file", "", "faultmail will not send")


def certificate(
    *names: str, days_left: float = 90, started_days_ago: float = 30
) -> x509.Certificate:
    ca = trustme.CA(organization_name="Example Test CA")
    leaf = ca.issue_cert(
        *(names or ("localhost",)),
        not_before=NOW - datetime.timedelta(days=started_days_ago),
        not_after=NOW + datetime.timedelta(days=days_left),
    )
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


def verify_error(code: int, message: str) -> BaseException:
    """What aiosmtplib raises when verification fails: the ssl error as the cause."""
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    wrapped = aiosmtplib.SMTPConnectError("Error connecting to localhost")
    wrapped.__cause__ = error
    return wrapped


def test_valid_certificate_says_days_to_expiry_and_issuer() -> None:
    """A verified certificate is OK with the days left, the date and the issuer."""
    check = cert_ok("relay TLS", RELAY, certificate(days_left=90.5), "TLSv1.3", NOW)
    assert check.status is Status.OK
    assert check.detail.startswith("certificate valid for localhost, expires in 90 days (")
    assert "issuer Example Test CA, TLSv1.3" in check.detail


def test_certificate_near_its_end_is_a_warning_with_the_date() -> None:
    """Fewer than 14 days left is a WARN whose fix says renew before that date."""
    cert = certificate(days_left=5)
    check = cert_ok("relay TLS", RELAY, cert, None, NOW)
    assert check.status is Status.WARN and "expires in 5 days" in check.detail
    assert check.fix == (
        f"renew the relay's certificate before {cert.not_valid_after_utc:%Y-%m-%d}: then "
        "faultmail will not send"
    )


def test_expired_certificate_says_when() -> None:
    """An expired certificate (X509 error 10) says on which day and how many days ago."""
    cert = certificate(days_left=-3, started_days_ago=90)
    check = tls_failure("relay TLS", RELAY, verify_error(10, "certificate has expired"), cert, NOW)
    assert check.status is Status.FAIL
    assert f"expired on {cert.not_valid_after_utc:%Y-%m-%d} (3 days ago)" in check.detail
    assert check.fix.startswith("renew the relay's certificate")


def test_not_yet_valid_certificate_points_at_our_clock() -> None:
    """A certificate that starts in the future (error 9) quotes our clock and fixes NTP."""
    cert = certificate(started_days_ago=-2)
    check = tls_failure(
        "relay TLS", RELAY, verify_error(9, "certificate is not yet valid"), cert, NOW
    )
    assert check.status is Status.FAIL
    assert "our clock says 2026-11-27 10:00 UTC" in check.detail
    assert "timedatectl set-ntp true" in check.fix


def test_wrong_name_lists_the_names_the_certificate_has() -> None:
    """A host name mismatch (error 62) names the certificate's names and the host setting."""
    cert = certificate("mail.example.com", "smtp.example.com")
    check = tls_failure("relay TLS", RELAY, verify_error(62, "Hostname mismatch"), cert, NOW)
    assert "is for mail.example.com, smtp.example.com, not localhost" in check.detail
    assert check.fix.startswith("set smtp.host to a name the certificate lists")


def test_untrusted_certificate_names_the_ca_setting_and_issuer() -> None:
    """Any other verification error names the CA setting (and the file when set)."""
    cert = certificate()
    error = verify_error(20, "unable to get local issuer certificate")
    check = tls_failure("relay TLS", RELAY, error, cert, NOW)
    assert "not trusted: unable to get local issuer certificate" in check.detail
    assert check.fix.startswith("set smtp.ca_file to the CA") and "Example Test CA" in check.fix
    with_file = Peer("relay", "localhost", "smtp.host", "smtp.ca_file", "/etc/ca.pem", "x")
    fix = tls_failure("relay TLS", with_file, error, cert, NOW).fix
    assert fix.startswith("smtp.ca_file = /etc/ca.pem does not contain the CA")


def test_handshake_failure_without_verification_error() -> None:
    """A handshake that fails for another reason says TLS 1.2+ is needed on that port."""
    check = tls_failure("relay TLS", RELAY, ssl.SSLError(1, "wrong version number"), None, NOW)
    assert check.detail.startswith("TLS handshake with the relay failed")
    assert "TLS 1.2 or later" in check.fix
