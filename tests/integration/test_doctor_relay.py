"""`faultmail doctor`'s relay checks against aiosmtpd relays: healthy, without STARTTLS,
implicit TLS, with expired, wrong-name and untrusted certificates, refusing our password or
token, and down."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from agent import doctor
from agent.doctor import Status
from tests.conftest import write_secret
from tests.harness.dns import DnsServer
from tests.harness.pki import SERVER_IDENTITIES, TestPKI
from tests.harness.relay import Relay
from tests.integration.conftest import SettingsFactory, by_name, run

pytestmark = pytest.mark.integration


class ExpiredCertPKI(TestPKI):
    """A CA whose servers present a certificate that expired a few days ago."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        super().__init__(name="expired-cert test CA")
        self.not_after = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
        self._directory = directory

    def server_ssl_context(self, identities: tuple[str, ...] = SERVER_IDENTITIES) -> ssl.SSLContext:
        files = self.server_cert_files(
            self._directory, identities=identities, not_after=self.not_after
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        return context


def _checks_against(
    other: Relay, settings_for: SettingsFactory, dns_server: DnsServer
) -> dict[str, doctor.Check]:
    """The doctor's checks against `other` instead of the test's relay, which runs meanwhile."""
    with other:
        return by_name(run(settings_for(smtp={"port": other.port}), dns_server))


def test_relay_without_starttls_fails_and_gets_no_credentials(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """A relay that offers AUTH but no STARTTLS is a FAIL, and no AUTH line is ever sent."""
    plain = Relay(tmp_path / "plain", None, mode="plain-auth", users=relay.users)
    checks = _checks_against(plain, settings_for, dns_server)
    check = checks["relay STARTTLS"]
    assert check.status is Status.FAIL
    assert "the relay does not offer STARTTLS; faultmail will not send" in check.detail
    assert 'security = "tls"' in check.fix and "STARTTLS" in check.fix
    assert "relay AUTH" not in checks and "relay TLS" not in checks
    assert plain.auth_attempts == [] and plain.cleartext_auth_commands == []
    assert plain.mails == []


def test_expired_relay_certificate_fails_with_renewal_fix(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """An expired relay certificate is a FAIL saying when it expired; nothing is sent."""
    expired_pki = ExpiredCertPKI(tmp_path / "expired-certs")
    expired = Relay(tmp_path / "expired", expired_pki, users=relay.users)
    expired.start()
    try:
        settings = settings_for(smtp={"port": expired.port, "ca_file": str(expired.ca_file)})
        checks = run(settings, dns_server)
    finally:
        expired.stop()
    found = by_name(checks)
    tls = found["relay TLS"]
    assert tls.status is Status.FAIL
    assert "certificate expired on" in tls.detail and "(3 days ago)" in tls.detail
    assert "faultmail will not send" in tls.detail
    assert tls.fix.startswith("renew the relay's certificate")
    assert "relay AUTH" not in found
    assert expired.auth_attempts == [] and expired.mails == []
    assert doctor.exit_code(checks) == 1


def test_expired_certificate_on_implicit_tls_relay(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """With security = "tls" the relay is reachable but its expired certificate is a FAIL."""
    expired_pki = ExpiredCertPKI(tmp_path / "expired-certs")
    expired = Relay(tmp_path / "expired465", expired_pki, mode="tls", users=relay.users)
    expired.start()
    try:
        settings = settings_for(
            smtp={"port": expired.port, "security": "tls", "ca_file": str(expired.ca_file)}
        )
        found = by_name(run(settings, dns_server))
    finally:
        expired.stop()
    assert found["relay"].status is Status.OK and "implicit TLS" in found["relay"].detail
    assert found["relay TLS"].status is Status.FAIL
    assert "expired" in found["relay TLS"].detail
    assert expired.auth_attempts == []


def test_implicit_tls_relay_is_ok(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
    pki: TestPKI,
) -> None:
    """With security = "tls" (port-465 style) there is no STARTTLS step; TLS and AUTH are OK."""
    implicit = Relay(tmp_path / "implicit", pki, mode="tls", users=relay.users)
    implicit.start()
    try:
        settings = settings_for(smtp={"port": implicit.port, "security": "tls"})
        found = by_name(run(settings, dns_server))
    finally:
        implicit.stop()
    assert "relay STARTTLS" not in found
    for name in ("relay", "relay TLS", "relay EHLO", "relay AUTH"):
        assert found[name].status is Status.OK, found[name]
    assert "implicit TLS" in found["relay"].detail
    assert [a.success for a in implicit.auth_attempts] == [True] and implicit.mails == []


def test_relay_certificate_for_another_name_fails_naming_both(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
    pki: TestPKI,
) -> None:
    """A trusted certificate for mail.example.com on a relay we call localhost is a FAIL whose
    fix names smtp.host and the name the certificate carries."""
    other = Relay(
        tmp_path / "othername", pki, users=relay.users, cert_identities=("mail.example.com",)
    )
    found = _checks_against(other, settings_for, dns_server)
    tls = found["relay TLS"]
    assert tls.status is Status.FAIL
    assert "certificate is for mail.example.com, not localhost" in tls.detail
    assert "set smtp.host to a name the certificate lists (mail.example.com)" in tls.fix
    assert other.auth_attempts == []


def test_untrusted_relay_certificate_names_the_ca_setting(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """A certificate from a CA we do not trust is a FAIL pointing at smtp.ca_file and the issuer."""
    stranger = Relay(tmp_path / "stranger", TestPKI.unrelated(), users=relay.users)
    found = _checks_against(stranger, settings_for, dns_server)
    tls = found["relay TLS"]
    assert tls.status is Status.FAIL and "not trusted" in tls.detail
    assert "smtp.ca_file" in tls.fix and "unrelated test CA" in tls.fix
    assert stranger.auth_attempts == []


def test_wrong_relay_password_fails_naming_the_keys(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """Refused credentials are a FAIL naming smtp.username and smtp.password_file (over TLS)."""
    wrong = write_secret(tmp_path / "wrong-password", "not-the-password")
    found = by_name(run(settings_for(smtp={"password_file": str(wrong)}), dns_server))
    auth = found["relay AUTH"]
    assert auth.status is Status.FAIL and "535" in auth.detail
    assert "smtp.username (gw@example.com)" in auth.fix and str(wrong) in auth.fix
    assert found["relay TLS"].status is Status.OK
    assert relay.auth_attempts and all(a.tls and not a.success for a in relay.auth_attempts)
    assert relay.mails == []


def test_xoauth2_relay_login_uses_the_token_not_a_password(
    tmp_path: Path, pki: TestPKI, settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """With smtp.auth = "xoauth2" the doctor logs in with the configured token, as the daemon
    does; a token the relay refuses is a FAIL pointing at [smtp.oauth], not the password."""
    token = tmp_path / "token"
    with Relay(tmp_path / "oauth-relay", pki, mode="starttls", oauth_tokens={"tok-1"}) as relay:
        smtp = {
            "port": relay.port,
            "password_file": None,
            "auth": "xoauth2",
            "oauth": {"token_file": str(token)},
        }
        token.write_text("tok-1\n")
        accepted = by_name(run(settings_for(smtp=smtp), dns_server))["relay AUTH"]
        token.write_text("revoked\n")
        refused = by_name(run(settings_for(smtp=smtp), dns_server))["relay AUTH"]
        mechanisms = [(a.mechanism, a.success, a.tls) for a in relay.auth_attempts]
    assert accepted.status is Status.OK and "XOAUTH2" in accepted.detail
    assert refused.status is Status.FAIL and "[smtp.oauth]" in refused.fix
    # A refused token is read afresh and tried once more (the daemon's login), then FAIL.
    assert mechanisms == [("XOAUTH2", True, True)] + [("XOAUTH2", False, True)] * 2


def test_unreachable_relay_fails_and_skips_the_rest(
    settings_for: SettingsFactory, dns_server: DnsServer, relay: Relay
) -> None:
    """A relay that is down is one FAIL naming smtp.host/smtp.port; SPF still reports."""
    relay.stop()
    found = by_name(run(settings_for(), dns_server))
    assert found["relay"].status is Status.FAIL and "cannot connect" in found["relay"].detail
    assert "smtp.host and smtp.port" in found["relay"].fix
    # The EHLO name is a configuration check, made without the relay.
    assert not any(name.startswith("relay ") and name != "relay EHLO name" for name in found)
    assert found["SPF"].status is Status.OK and "address is unknown" in found["SPF"].detail
