"""doctor.clock: the clock verdict from what the network checks saw, with now and the kernel's
NTP state passed in."""

from __future__ import annotations

import datetime

import trustme
from cryptography import x509

from agent.doctor.clock import CLOCK_FLOOR, clock_verdict
from agent.doctor.result import Facts, Status

NOW = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.UTC)
SYNCED = (True, 0.012)


def relay_said(skew_s: float) -> Facts:
    """Facts of a relay whose greeting was skew_s seconds behind our clock."""
    peer = NOW - datetime.timedelta(seconds=skew_s)
    return Facts(peer_time=peer, seen_at=NOW, peer_time_text=f"{peer:%a, %d %b %Y %H:%M:%S}")


def test_small_skew_is_ok_and_says_which_way() -> None:
    """Within a minute of the relay's clock is OK, with the seconds and direction."""
    check = clock_verdict([relay_said(12)], now=NOW, kernel=SYNCED)
    assert check.status is Status.OK
    assert check.detail.startswith("12 s ahead of the relay's clock")
    assert "max error 12 ms" in check.detail
    behind = clock_verdict([relay_said(-30)], now=NOW, kernel=None)
    assert behind.status is Status.OK and behind.detail.startswith("30 s behind")


def test_minutes_of_skew_warn_and_more_fails() -> None:
    """Up to five minutes is a WARN; beyond that a FAIL naming DKIM and TLS; both fix NTP."""
    warned = clock_verdict([relay_said(200)], now=NOW, kernel=SYNCED)
    assert warned.status is Status.WARN and "timedatectl set-ntp true" in warned.fix
    failed = clock_verdict([relay_said(7200)], now=NOW, kernel=SYNCED)
    assert failed.status is Status.FAIL and "DKIM signature times" in failed.detail
    assert "the relay's is not" in failed.fix


def test_without_a_peer_clock_the_kernel_decides() -> None:
    """No dated greeting: OK only when the kernel reports NTP sync, else a WARN."""
    unseen = [Facts(), Facts()]
    synced = clock_verdict(unseen, now=NOW, kernel=SYNCED)
    assert synced.status is Status.OK and "could not compare" in synced.detail
    unsynced = clock_verdict(unseen, now=NOW, kernel=(False, 16.0))
    assert unsynced.status is Status.WARN and "not NTP-synchronised" in unsynced.detail
    unknown = clock_verdict(unseen, now=NOW, kernel=None)
    assert unknown.status is Status.WARN and "NTP state is unknown" in unknown.detail


def test_a_clock_before_the_floor_fails_whatever_else() -> None:
    """A clock before this faultmail existed (a gateway booted in 1970) is a FAIL even when
    the relay agrees with it."""
    booted = datetime.datetime(1970, 1, 1, 0, 5, tzinfo=datetime.UTC)
    assert booted < CLOCK_FLOOR
    check = clock_verdict([relay_said(0)], now=booted, kernel=SYNCED)
    assert check.status is Status.FAIL and "1970-01-01 00:05 UTC" in check.detail
    assert "RTC battery" in check.fix


def test_a_clock_before_a_certificate_start_fails() -> None:
    """A clock earlier than the start of a peer's certificate is a FAIL naming that peer."""
    leaf = trustme.CA().issue_cert(
        "localhost",
        not_before=NOW + datetime.timedelta(days=2),
        not_after=NOW + datetime.timedelta(days=90),
    )
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    facts = Facts(certificates=[("broker", cert)])
    check = clock_verdict([relay_said(0), facts], now=NOW, kernel=SYNCED)
    assert check.status is Status.FAIL
    assert "before the start of the broker's certificate (2026-11-29" in check.detail
