"""`faultmail doctor`'s clock check against relays whose greeting carries a date (or none)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from agent import doctor
from agent.doctor import Status
from tests.harness.dns import DnsServer
from tests.harness.pki import TestPKI
from tests.harness.relay import Relay
from tests.integration.conftest import SettingsFactory, by_name, dated_hostname, run

pytestmark = pytest.mark.integration


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
