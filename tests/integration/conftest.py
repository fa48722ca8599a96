"""Fixtures shared by the integration tests: for `faultmail doctor`, an authoritative DNS
server with a healthy gateway's DKIM, SPF and DMARC records, DKIM keys, a relay whose greeting
carries a date, and settings for the test's broker and relay with [dkim] set; plus the helpers
the doctor tests read their results with."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from agent import doctor
from agent.doctor import Check
from agent.settings import Settings, load_settings
from agent.signing import GeneratedKey, keygen
from tests.conftest import Credentials, DaemonConfigFactory
from tests.harness.dns import DnsServer
from tests.harness.pki import TestPKI
from tests.harness.relay import Relay

DOMAIN = "example.com"
SELECTOR = "gw2026"
ED_SELECTOR = "gw2026e"
SPF = "v=spf1 ip4:127.0.0.0/8 -all"
DMARC = "v=DMARC1; p=reject; adkim=s; aspf=r; rua=mailto:dmarc@example.com"


def record(key: GeneratedKey) -> str:
    """The TXT value keygen printed for key, as one string."""
    return "".join(key.txt_strings)


def by_name(checks: list[Check]) -> dict[str, Check]:
    """The checks by name (asserting no name occurs twice)."""
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def dated_hostname(when: datetime.datetime) -> str:
    """A relay host name that makes aiosmtpd's greeting carry a date, as Exim's and
    Microsoft's do: ``220 localhost ESMTP Fri, 27 Nov 2026 10:00:00 +0000 Python SMTP``."""
    return f"localhost ESMTP {format_datetime(when)}"


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
    """doctor.run asking dns_server (when given), with a 5 s timeout unless told."""
    if dns_server is not None:
        kwargs |= {"resolver": dns_server.host, "resolver_port": dns_server.port}
    return doctor.run(settings, timeout=kwargs.pop("timeout", 5.0), **kwargs)
