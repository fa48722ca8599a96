"""`faultmail doctor` against real servers: Mosquitto, aiosmtpd relays (healthy, without
STARTTLS, with expired, wrong-name and untrusted certificates, refusing our password) and a
DNS server on a loopback port serving matching and mismatching DKIM, SPF and DMARC records."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import json
import os
import sqlite3
import ssl
import subprocess
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from agent import doctor
from agent.doctor import Check, Status
from agent.doctor.resolver import Resolver
from agent.doctor.spf import spf_checks
from agent.outbox import SCHEMA_VERSION, Outbox
from agent.settings import Settings, load_settings
from agent.signing import GeneratedKey, keygen
from tests.conftest import Credentials, DaemonConfigFactory, DaemonFactory, write_secret
from tests.harness.dns import DnsServer
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import SERVER_IDENTITIES, TestPKI
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault

pytestmark = pytest.mark.integration

DOMAIN = "example.com"
SELECTOR = "gw2026"
ED_SELECTOR = "gw2026e"
DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
SPF = "v=spf1 ip4:127.0.0.0/8 -all"
DMARC = "v=DMARC1; p=reject; adkim=s; aspf=r; rua=mailto:dmarc@example.com"


def record(key: GeneratedKey) -> str:
    return "".join(key.txt_strings)


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def dated_hostname(when: datetime.datetime) -> str:
    """A relay host name that makes aiosmtpd's greeting carry a date, as Exim's and
    Microsoft's do: ``220 localhost ESMTP Fri, 27 Nov 2026 10:00:00 +0000 Python SMTP``."""
    return f"localhost ESMTP {format_datetime(when)}"


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


@pytest.fixture(scope="module")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedKey, GeneratedKey]:
    """An RSA and an Ed25519 DKIM key, as `faultmail dkim keygen` writes them."""
    directory = tmp_path_factory.mktemp("dkim")
    rsa_key = keygen(SELECTOR, DOMAIN, directory / "rsa.key")
    ed_key = keygen(ED_SELECTOR, DOMAIN, directory / "ed.key", "ed25519")
    return rsa_key, ed_key


@pytest.fixture
def dns_server(dkim_keys: tuple[GeneratedKey, GeneratedKey]) -> Iterator[DnsServer]:
    """An authoritative server for example.com with the DKIM, SPF and DMARC records a healthy
    gateway needs."""
    rsa_key, ed_key = dkim_keys
    server = DnsServer()
    server.txt(rsa_key.dns_name, record(rsa_key))
    server.txt(ed_key.dns_name, record(ed_key))
    server.txt(DOMAIN, SPF, "google-site-verification=abc")
    server.txt(f"_dmarc.{DOMAIN}", DMARC)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dated_relay(tmp_path: Path, pki: TestPKI, relay_credentials: Credentials) -> Iterator[Relay]:
    """A healthy STARTTLS relay whose greeting carries the current date."""
    server = Relay(
        tmp_path / "dated-relay",
        pki,
        users={relay_credentials.username: relay_credentials.password},
        hostname=dated_hostname(datetime.datetime.now(datetime.UTC)),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def settings_for(
    daemon_config: DaemonConfigFactory, dkim_keys: tuple[GeneratedKey, GeneratedKey]
) -> SettingsFactory:
    """Settings from the test's daemon config (broker, relay) with [dkim] using both keys;
    keyword arguments as for daemon_config, plus dkim= to update that table."""
    rsa_key, ed_key = dkim_keys

    def factory(*, dkim: dict[str, Any] | None = None, **kwargs: Any) -> Settings:
        table: dict[str, Any] = {
            "domain": DOMAIN,
            "selector": SELECTOR,
            "private_key_file": str(rsa_key.path),
            "ed25519_key_file": str(ed_key.path),
            "ed25519_selector": ED_SELECTOR,
        }
        table.update(dkim or {})
        extra = {"dkim": table, **kwargs.pop("extra", {})}
        return load_settings(daemon_config(extra=extra, **kwargs))

    return factory


def run(settings: Settings, dns_server: DnsServer | None = None, **kwargs: Any) -> list[Check]:
    if dns_server is not None:
        kwargs |= {"resolver": dns_server.host, "resolver_port": dns_server.port}
    return doctor.run(settings, timeout=kwargs.pop("timeout", 5.0), **kwargs)


def test_healthy_gateway_is_all_ok(
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    dated_relay: Relay,
    mosquitto: Mosquitto,
) -> None:
    """Against a healthy broker, relay and DNS every check is OK, the exit code 0, and the
    relay saw a login but no mail."""
    settings = settings_for(smtp={"port": dated_relay.port})
    checks = run(settings, dns_server)
    text = doctor.format_checks(checks)
    assert [c.status for c in checks] == [Status.OK] * len(checks), text
    assert doctor.exit_code(checks) == 0
    found = by_name(checks)
    assert list(found) == [
        "config",
        "state dir",
        "database",
        "disk",
        "broker",
        "broker TLS",
        "broker login",
        "broker subscribe",
        "relay",
        "relay STARTTLS",
        "relay TLS",
        "relay EHLO",
        "relay AUTH",
        "DKIM rsa",
        "DKIM ed25519",
        "SPF",
        "DMARC",
        "clock",
    ]
    assert "certificate valid for localhost, expires in" in found["relay TLS"].detail
    assert "AUTH" in found["relay EHLO"].detail and "SIZE" in found["relay EHLO"].detail
    assert "allows this gateway (127.0.0.1" in found["SPF"].detail
    assert "p=reject, adkim=strict" in found["DMARC"].detail
    assert "the relay's clock" in found["clock"].detail
    assert [a.success for a in dated_relay.auth_attempts] == [True]
    assert dated_relay.mails == [] and dated_relay.attempts == []
    assert all(q.transport in ("udp", "tcp") for q in dns_server.queries)
    # One line per check, and no fix lines when everything is OK.
    assert len(text.splitlines()) == len(checks) and "fix:" not in text


def test_relay_without_starttls_fails_and_gets_no_credentials(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """A relay that offers AUTH but no STARTTLS is a FAIL, and no AUTH line is ever sent."""
    plain = Relay(tmp_path / "plain", None, mode="plain-auth", users=relay.users)
    plain.start()
    try:
        checks = by_name(run(settings_for(smtp={"port": plain.port}), dns_server))
    finally:
        plain.stop()
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
    other.start()
    try:
        found = by_name(run(settings_for(smtp={"port": other.port}), dns_server))
    finally:
        other.stop()
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
    stranger.start()
    try:
        found = by_name(run(settings_for(smtp={"port": stranger.port}), dns_server))
    finally:
        stranger.stop()
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
    assert mechanisms == [("XOAUTH2", True, True), ("XOAUTH2", False, True)]


def test_unreachable_relay_fails_and_skips_the_rest(
    settings_for: SettingsFactory, dns_server: DnsServer, relay: Relay
) -> None:
    """A relay that is down is one FAIL naming smtp.host/smtp.port; SPF still reports."""
    relay.stop()
    found = by_name(run(settings_for(), dns_server))
    assert found["relay"].status is Status.FAIL and "cannot connect" in found["relay"].detail
    assert "smtp.host and smtp.port" in found["relay"].fix
    assert not any(name.startswith("relay ") for name in found)
    assert found["SPF"].status is Status.OK and "address is unknown" in found["SPF"].detail


def test_dkim_record_matching_mismatching_and_missing(
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    dkim_keys: tuple[GeneratedKey, GeneratedKey],
    tmp_path: Path,
) -> None:
    """The DKIM check is OK for the published key, FAIL for another key or no record, and
    the fix is the record to publish."""
    rsa_key, ed_key = dkim_keys
    settings = settings_for()
    assert by_name(run(settings, dns_server))["DKIM rsa"].status is Status.OK

    other = keygen(SELECTOR, DOMAIN, tmp_path / "other.key")
    dns_server.set_txt(rsa_key.dns_name, record(other))
    dns_server.set_txt(ed_key.dns_name, "v=DKIM1; k=ed25519; p=" + "A" * 43 + "=")
    found = by_name(run(settings, dns_server))
    mismatch = found["DKIM rsa"]
    assert mismatch.status is Status.FAIL and "is not the public half of" in mismatch.detail
    assert record(rsa_key) in mismatch.fix and "private_key_file" in mismatch.fix
    assert found["DKIM ed25519"].status is Status.FAIL
    assert record(ed_key) in found["DKIM ed25519"].fix

    dns_server.remove(rsa_key.dns_name)
    missing = by_name(run(settings, dns_server))["DKIM rsa"]
    assert missing.status is Status.FAIL
    assert f"no DKIM record at {SELECTOR}._domainkey.{DOMAIN}" in missing.detail
    assert missing.fix == f'publish {rsa_key.dns_name}. IN TXT "{record(rsa_key)}"'


def test_dkim_record_over_tcp(
    settings_for: SettingsFactory, dkim_keys: tuple[GeneratedKey, GeneratedKey]
) -> None:
    """When the DNS server truncates UDP answers the lookup retries over TCP and still matches."""
    rsa_key, ed_key = dkim_keys
    with DnsServer(truncate_udp=True) as server:
        server.txt(rsa_key.dns_name, record(rsa_key))
        server.txt(ed_key.dns_name, record(ed_key))
        found = by_name(run(settings_for(), server))
        transports = {q.transport for q in server.queries if q.name == rsa_key.dns_name}
    assert found["DKIM rsa"].status is Status.OK
    assert found["DKIM ed25519"].status is Status.OK
    assert transports == {"udp", "tcp"}


def test_unreadable_or_broken_dkim_key_fails(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A key file that is not a key is a FAIL whose fix is `faultmail dkim keygen`."""
    bogus = tmp_path / "bogus.key"
    bogus.write_text("-----BEGIN NOTHING-----\n")
    check = by_name(run(settings_for(dkim={"private_key_file": str(bogus)}), dns_server))[
        "DKIM rsa"
    ]
    assert check.status is Status.FAIL and "not a usable rsa key" in check.detail
    assert "faultmail dkim keygen --selector gw2026 --domain example.com" in check.fix


def test_no_dkim_section_is_a_warning(
    daemon_config: DaemonConfigFactory, dns_server: DnsServer
) -> None:
    """Without [dkim] doctor warns that mail goes out unsigned and says how to add a key."""
    found = by_name(run(load_settings(daemon_config()), dns_server))
    assert found["DKIM"].status is Status.WARN and "unsigned" in found["DKIM"].detail
    assert "faultmail dkim keygen" in found["DKIM"].fix


def test_spf_and_dmarc_missing_or_weak(
    settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """No SPF or DMARC record is a WARN with the record to publish; +all is a WARN; an SPF
    record that does not cover this gateway's address is a WARN explaining when that is fine."""
    settings = settings_for()
    dns_server.remove(DOMAIN)
    dns_server.remove(f"_dmarc.{DOMAIN}")
    found = by_name(run(settings, dns_server))
    assert found["SPF"].status is Status.WARN and "no SPF record" in found["SPF"].detail
    assert found["SPF"].fix.startswith('publish example.com. IN TXT "v=spf1')
    assert found["DMARC"].status is Status.WARN
    assert found["DMARC"].fix.startswith('publish _dmarc.example.com. IN TXT "v=DMARC1; p=none')

    dns_server.set_txt(DOMAIN, "v=spf1 mx +all")
    dns_server.set_txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=quarantine")
    found = by_name(run(settings, dns_server))
    assert found["SPF"].status is Status.WARN and "+all" in found["SPF"].detail
    assert found["DMARC"].status is Status.OK
    assert "p=quarantine, adkim=relaxed" in found["DMARC"].detail

    # The relay's servers are in the record, this gateway (on loopback) is not: receivers
    # never see a non-public address, so that is fine.
    dns_server.set_txt(DOMAIN, "v=spf1 include:_spf.relay.example.net -all")
    dns_server.txt("_spf.relay.example.net", "v=spf1 ip4:192.0.2.0/24 -all")
    spf = by_name(run(settings, dns_server))["SPF"]
    assert spf.status is Status.OK and "127.0.0.1 is not public" in spf.detail
    assert "fail for 127.0.0.1" in spf.detail

    # A public gateway address the record does not cover is worth a warning.
    resolver = Resolver(dns_server.host, dns_server.port, 3.0)
    (public,) = asyncio.run(spf_checks(settings, resolver, "8.8.8.8")).checks
    assert public.status is Status.WARN and "gives fail" in public.detail
    assert "ip4:8.8.8.8" in public.fix and "relay sends from its own servers" in public.fix

    dns_server.set_txt(DOMAIN, "v=spf1 -all", "v=spf1 ~all")
    assert by_name(run(settings, dns_server))["SPF"].status is Status.FAIL


def test_spf_a_and_mx_mechanisms(settings_for: SettingsFactory, dns_server: DnsServer) -> None:
    """SPF evaluation follows a, mx and redirect= to this gateway's address."""
    dns_server.set_txt(DOMAIN, "v=spf1 redirect=_spf.example.com")
    dns_server.txt("_spf.example.com", "v=spf1 a:relay.example.net mx:example.com/30 -all")
    dns_server.add("relay.example.net", "A", "192.0.2.1")
    dns_server.add(DOMAIN, "MX", "10 mx1.example.com.")
    dns_server.add("mx1.example.com", "A", "127.0.0.2")
    spf = by_name(run(settings_for(), dns_server))["SPF"]
    assert spf.status is Status.OK and "mx:example.com/30 at _spf.example.com" in spf.detail


def test_dns_server_down_is_a_warning_naming_the_resolver(
    settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """Lookups that time out are WARN (not FAIL) and the fix names the resolver that was asked."""
    dns_server.stop()
    found = by_name(run(settings_for(), dns_server, timeout=1.0))
    for name in ("DKIM rsa", "SPF", "DMARC"):
        assert found[name].status is Status.WARN, found[name]
        assert f"127.0.0.1:{dns_server.port}" in found[name].fix


def test_clock_compared_with_the_relays_greeting(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    pki: TestPKI,
    relay: Relay,
) -> None:
    """A relay whose greeting says it is two hours earlier makes the clock check FAIL."""
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    skewed = Relay(tmp_path / "skewed", pki, users=relay.users, hostname=dated_hostname(earlier))
    skewed.start()
    try:
        clock = by_name(run(settings_for(smtp={"port": skewed.port}), dns_server))["clock"]
    finally:
        skewed.stop()
    assert clock.status is Status.FAIL
    seconds = int(clock.detail.split(" s ", 1)[0])
    assert 7150 < seconds < 7250 and "ahead of the relay's clock" in clock.detail
    assert "timedatectl set-ntp true" in clock.fix


def test_clock_without_a_relay_date_is_honest(
    settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """With no dated greeting the clock check says it could not compare (OK only if the kernel
    reports NTP sync)."""
    clock = by_name(run(settings_for(), dns_server))["clock"]
    assert "could not compare" in clock.detail
    synced = doctor.kernel_clock_synced()
    assert clock.status is (Status.OK if synced and synced[0] else Status.WARN)


def test_database_states(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """The outbox: absent is OK (created at start), healthy reports the schema, garbage and a
    newer schema are FAIL with the fix."""
    state = tmp_path / "state"
    settings = settings_for(state_dir=state)
    checks = by_name(run(settings, dns_server))
    assert (
        checks["database"].status is Status.OK and "does not exist yet" in checks["database"].detail
    )
    assert checks["state dir"].status is Status.OK

    Outbox(state / "outbox.db").close()
    db = by_name(run(settings, dns_server))["database"]
    assert db.status is Status.OK
    assert (
        f"integrity ok, schema {SCHEMA_VERSION}" in db.detail and "0 mail(s) pending" in db.detail
    )

    with sqlite3.connect(state / "outbox.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    newer = by_name(run(settings, dns_server))["database"]
    assert newer.status is Status.FAIL and "upgrade faultmail" in newer.fix

    for suffix in ("", "-wal", "-shm"):
        (state / f"outbox.db{suffix}").unlink(missing_ok=True)
    (state / "outbox.db").write_bytes(b"this is not a database, just bytes\n" * 200)
    broken = by_name(run(settings, dns_server))["database"]
    assert broken.status is Status.FAIL and "cannot be read as an SQLite database" in broken.detail
    assert "outbox.db.damaged" in broken.fix


def test_state_dir_not_writable(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A state directory this user cannot write to is a FAIL whose fix is a chown."""
    state = tmp_path / "readonly-state"
    state.mkdir()
    # Root writes through mode bits; a read-only mount stops root too (CI runs as root).
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=True
        )
    else:
        state.chmod(0o500)
    try:
        check = by_name(run(settings_for(state_dir=state), dns_server))["state dir"]
    finally:
        if as_root:
            subprocess.run(["umount", str(state)], check=True)
        else:
            state.chmod(0o700)
    assert check.status is Status.FAIL and check.fix.startswith("chown ")


def test_state_dir_under_a_file(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A state directory that cannot exist (a file is in the way) is a FAIL naming the key."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    check = by_name(run(settings_for(state_dir=blocker / "state"), dns_server))["state dir"]
    assert check.status is Status.FAIL and f"{blocker} is a file" in check.detail
    assert "gateway.state_dir" in check.fix


def test_secret_readable_by_others_is_a_config_warning(
    settings_for: SettingsFactory, dns_server: DnsServer, relay_credentials: Credentials
) -> None:
    """A password file others can read is a WARN whose fix is the chmod."""
    relay_credentials.password_file.chmod(0o644)
    check = by_name(run(settings_for(), dns_server))["config"]
    assert check.status is Status.WARN and "readable by everyone" in check.detail
    assert check.fix == f"chmod 600 {relay_credentials.password_file}"


def test_broker_password_and_certificate(
    tmp_path: Path,
    pki: TestPKI,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
) -> None:
    """Against a TLS broker with a password file: the verified certificate and login are OK; a
    wrong password and an untrusted CA are each a FAIL whose fix names the setting to change."""
    users = {"faultmail": "fm-secret-1"}
    broker = Mosquitto(tmp_path / "tls-broker", users=users, tls=pki)
    broker.start()
    try:
        secret = write_secret(tmp_path / "mqtt-password", users["faultmail"])
        mqtt = {
            "host": "localhost",
            "port": broker.port,
            "tls": True,
            "ca_file": str(broker.ca_file),
            "username": "faultmail",
            "password_file": str(secret),
        }
        found = by_name(run(settings_for(mqtt=mqtt), dns_server))
        assert found["broker TLS"].status is Status.OK
        assert "certificate valid for localhost" in found["broker TLS"].detail
        assert found["broker login"].status is Status.OK
        assert "accepted as faultmail" in found["broker login"].detail
        assert found["broker subscribe"].status is Status.OK

        wrong = write_secret(tmp_path / "wrong-mqtt-password", "nope")
        found = by_name(
            run(
                settings_for(name="wrong.toml", mqtt={**mqtt, "password_file": str(wrong)}),
                dns_server,
            )
        )
        login = found["broker login"]
        assert login.status is Status.FAIL and "refused the login as faultmail" in login.detail
        assert "mqtt.username (faultmail)" in login.fix and str(wrong) in login.fix
        assert "broker subscribe" not in found

        stranger_ca = TestPKI.unrelated().ca_file(tmp_path / "stranger")
        found = by_name(
            run(
                settings_for(name="ca.toml", mqtt={**mqtt, "ca_file": str(stranger_ca)}),
                dns_server,
            )
        )
        tls = found["broker TLS"]
        assert tls.status is Status.FAIL and "not trusted" in tls.detail
        assert "mqtt.ca_file" in tls.fix and "faultmail test CA" in tls.fix
        assert "broker login" not in found
    finally:
        broker.close()
    assert "faultmail-gw-test-01-doctor" in broker.log_text()


def dynsec_config(path: Path, username: str, password: str, readable: str) -> Path:
    """A Mosquitto dynamic-security file: username may subscribe to `readable` only."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": username,
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": 101,
                "roles": [{"rolename": "reader"}],
            }
        ],
        "roles": [
            {
                "rolename": "reader",
                "acls": [{"acltype": "subscribePattern", "topic": readable, "allow": True}],
            }
        ],
        "groups": [],
    }
    path.write_text(json.dumps(config))
    return path


@pytest.mark.skipif(not DYNSEC_PLUGIN.exists(), reason="mosquitto dynamic security plugin")
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_refusing_the_subscription(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    protocol: str,
) -> None:
    """A broker whose ACL refuses our topic filter (SUBACK failure) is a FAIL naming the ACL."""
    work = tmp_path / "dynsec-broker"
    work.mkdir()
    dynsec = dynsec_config(work / "dynsec.json", "faultmail", "fm-secret-2", "other/#")
    broker = Mosquitto(
        work,
        extra_config=f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {dynsec}",
    )
    broker.start()
    try:
        secret = write_secret(tmp_path / "mqtt-password", "fm-secret-2")
        mqtt = {
            "port": broker.port,
            "protocol": protocol,
            "username": "faultmail",
            "password_file": str(secret),
        }
        found = by_name(run(settings_for(mqtt=mqtt), dns_server))
    finally:
        broker.close()
    assert found["broker login"].status is Status.OK
    sub = found["broker subscribe"]
    assert sub.status is Status.FAIL and "the broker refused: devices/+/fault" in sub.detail
    assert "allow faultmail to read these topics in the broker's ACL" in sub.fix


def test_broker_granting_only_qos0_is_a_warning(
    tmp_path: Path, settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """A broker that downgrades the subscription to QoS 0 is a WARN: alerts could be lost."""
    broker = Mosquitto(tmp_path / "qos0-broker", extra_config="max_qos 0")
    broker.start()
    try:
        found = by_name(run(settings_for(mqtt={"port": broker.port}), dns_server))
    finally:
        broker.close()
    sub = found["broker subscribe"]
    assert sub.status is Status.WARN and "only QoS 0" in sub.detail
    assert "QoS 1" in sub.fix


def test_broker_down(
    settings_for: SettingsFactory, dns_server: DnsServer, mosquitto: Mosquitto
) -> None:
    """An unreachable broker is one FAIL naming mqtt.host and mqtt.port."""
    mosquitto.stop()
    found = by_name(run(settings_for(), dns_server))
    assert (
        found["broker"].status is Status.FAIL and "mqtt.host and mqtt.port" in found["broker"].fix
    )
    assert "broker login" not in found


def test_doctor_leaves_the_running_daemons_session_alone(
    daemon: DaemonFactory,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Doctor logs in as "<client id>-doctor" on a clean session: the running daemon keeps its
    connection and still mails an alert published right after."""
    settings = settings_for()
    dm = daemon()
    found = by_name(run(settings, dns_server))
    assert found["broker subscribe"].status is Status.OK
    assert "faultmail-gw-test-01-doctor" in found["broker login"].detail
    publish_many(mosquitto, [fault("pump-1", 1)])
    (mail,) = relay.wait_for(1, timeout=15)
    assert mail.message["X-Faultmail-Device"] == "pump-1"
    assert "already connected, closing old connection" not in mosquitto.log_text()
    assert dm.running


def test_main_prints_aligned_lines_and_exit_codes(
    tmp_path: Path,
    daemon_config: DaemonConfigFactory,
    dns_server: DnsServer,
    relay: Relay,
) -> None:
    """main() prints one aligned line per check with the fix under WARN/FAIL, and returns 1
    when something failed, 2 for an invalid config."""
    relay.stop()
    out = io.StringIO()
    code = doctor.main(daemon_config(), resolver=dns_server.address, timeout=3.0, out=out)
    lines = out.getvalue().splitlines()
    assert code == 1
    relay_line = next(line for line in lines if line.startswith("FAIL  relay"))
    detail_column = relay_line.index("cannot connect")
    fix_line = lines[lines.index(relay_line) + 1]
    assert fix_line.index("fix: ") == detail_column
    assert all(line[:6] in ("OK    ", "WARN  ", "FAIL  ") or line.startswith(" ") for line in lines)

    bad = tmp_path / "bad.toml"
    bad.write_text(daemon_config().read_text().replace("security = ", "security_typo = "))
    out = io.StringIO()
    assert doctor.main(bad, out=out) == 2
    assert "FAIL  config" in out.getvalue() and "smtp.security" in out.getvalue()

    out = io.StringIO()
    assert doctor.main(daemon_config(), resolver="dns.example.com", out=out) == 2
    assert "--resolver dns.example.com" in out.getvalue()


def test_exit_code_and_format() -> None:
    """WARN alone keeps exit code 0; any FAIL makes it 1; fixes sit under the detail column."""
    checks = [
        Check("disk", Status.OK, "9 GiB free"),
        Check("clock", Status.WARN, "could not compare", "enable NTP"),
    ]
    assert doctor.exit_code(checks) == 0
    assert doctor.exit_code([*checks, Check("relay", Status.FAIL, "down", "start it")]) == 1
    assert doctor.format_checks(checks).splitlines() == [
        "OK    disk   9 GiB free",
        "WARN  clock  could not compare",
        "             fix: enable NTP",
    ]
    assert doctor.parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert doctor.parse_resolver("[::1]:53") == ("::1", 53)
    assert doctor.parse_resolver("10.0.0.1") == ("10.0.0.1", 53)
