"""`faultmail doctor`'s DKIM, SPF and DMARC checks against a DNS server on a loopback port
serving matching and mismatching records (over UDP and TCP), and that server down."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agent.doctor import Status
from agent.doctor.resolver import Resolver
from agent.doctor.spf import spf_checks
from agent.settings import load_settings
from agent.signing import GeneratedKey, keygen
from tests.conftest import DaemonConfigFactory
from tests.harness.dns import DnsServer
from tests.integration.conftest import DOMAIN, SELECTOR, SettingsFactory, by_name, record, run

pytestmark = pytest.mark.integration


def _published(fix: str) -> str:
    """The TXT record a fix line asks to publish: its quoted strings, joined (RFC 6376 3.6.2.2)."""
    return "".join(re.findall(r'"([^"]*)"', fix))


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
    assert record(rsa_key) == _published(mismatch.fix) and "private_key_file" in mismatch.fix
    assert found["DKIM ed25519"].status is Status.FAIL
    assert record(ed_key) == _published(found["DKIM ed25519"].fix)

    dns_server.remove(rsa_key.dns_name)
    missing = by_name(run(settings, dns_server))["DKIM rsa"]
    assert missing.status is Status.FAIL
    assert f"no DKIM record at {SELECTOR}._domainkey.{DOMAIN}" in missing.detail
    assert missing.fix.startswith(f"publish {rsa_key.dns_name}. IN TXT (")
    assert _published(missing.fix) == record(rsa_key)
    # RFC 1035 3.3: one <character-string> is at most 255 octets.
    assert all(len(s.encode()) <= 255 for s in re.findall(r'"([^"]*)"', missing.fix))


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
