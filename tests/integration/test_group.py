"""faultmail as a group of real daemons on one real Mosquitto (issue 17): per-device state
stays whole across members (one block and one security notice for a rogue device, one thread
for repeats of one fault), a hand-written $share/ filter is refused, and in standby mode a
clean stop of the active member hands the lease over within seconds, losing nothing.

The mail-loss scenarios with a member SIGKILLed for good are in tests/faults/test_group_faults.py.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import GroupFactory
from tests.faults.load import DevicePublisher, faults
from tests.faults.support import FAST_DELIVERY
from tests.harness.daemon import DaemonError
from tests.harness.group import GROUP, wait_until
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import ReceivedMail, Relay
from tests.integration.support import fault, mail_alert_key, mail_kind, repeats_counted

pytestmark = pytest.mark.integration

SHARED = ["gw-a", "gw-b", "gw-c"]
EXIT_CONFIG = 2
# One mail per alert even when many wait at once (a handover backlog, a burst of 40): a digest
# lists alerts by message text only, and these tests find each alert's mail by device and seq.
NO_DIGESTS = {"digest_threshold": 100_000}


def _of_device(mails: list[ReceivedMail], uid: str, kind: str) -> list[ReceivedMail]:
    return [m for m in mails if m.message.get("X-Faultmail-Device") == uid and mail_kind(m) == kind]


def _mid(mail: ReceivedMail) -> str:
    """The Message-ID without the folding space (a group Message-ID is folded onto its own
    line, RFC 5322 2.2.3)."""
    return (mail.message_id or "").strip()


def _header(mail: ReceivedMail, name: str) -> str:
    return " ".join(str(mail.message.get(name, "")).split())


def _by_kind(mails: list[ReceivedMail], kind: str) -> list[ReceivedMail]:
    return [m for m in mails if mail_kind(m) == kind]


def test_shared_rogue_device_is_blocked_once_for_the_whole_group(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Shared mode, 3 members: a flooding device is blocked once (one retained block record,
    one security notice, one block notice), no member mails its alerts after the block, and
    every alert of the other devices is mailed."""
    members = group(
        "shared",
        SHARED,
        flood={
            "rate": 2.0,
            "burst": 5,
            "block_threshold": 200,
            "block_window": 10.0,
            "notify": ["security@example.com"],
        },
        mail=NO_DIGESTS,
    )
    members.wait_formed()
    normal = [fault(f"pump-{d}", n, code=f"E{n}") for n in range(1, 5) for d in range(10)]
    publish_many(mosquitto, normal)
    publish_many(mosquitto, [fault("rogue-1", i, code="E999") for i in range(1, 1001)], timeout=60)
    wait_until(
        lambda: "rogue-1" in members.blocked(), 20, lambda: "a block record for rogue-1", members
    )
    (block,) = members.blocked().values()
    assert block.get("uid") == "rogue-1" and block.get("by") in SHARED, block
    wait_until(
        lambda: _by_kind(relay.mails, "security-notice"),
        20,
        lambda: "the security notice",
        members,
    )
    # After the block is known: more of the rogue's messages, spread over every member by the
    # shared subscription, and a last round from the others.
    rogue_before = len(_of_device(relay.mails, "rogue-1", "alert"))
    publish_many(mosquitto, [fault("rogue-1", i, code="E999") for i in range(1001, 1301)])
    later = [fault(f"pump-{d}", 5, code="E5") for d in range(10)]
    publish_many(mosquitto, later)
    wanted = {(f"pump-{d}", n) for n in range(1, 6) for d in range(10)}
    wait_until(
        lambda: wanted <= {mail_alert_key(m) for m in relay.mails},
        30,
        lambda: f"the 50 normal alerts (have {len(relay.mails)} mails)",
        members,
    )
    time.sleep(3)  # room for a late rogue mail or a second notice to show up
    mails = relay.mails
    security = _by_kind(mails, "security-notice")
    notices = _by_kind(mails, "block-notice")
    rogue = _of_device(mails, "rogue-1", "alert")
    detail = f"{[(mail_kind(m), m.subject) for m in mails[-20:]]}\n{members.diagnostics()}"
    assert len(security) == 1, detail
    assert list(security[0].rcpt_tos) == ["security@example.com"]
    assert len(notices) == 1, detail
    assert len(rogue) == rogue_before <= 10, detail  # the burst once, not once per member
    assert len(members.blocked()) == 1


def test_shared_repeats_of_one_fault_make_one_thread(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Shared mode, 3 members: 200 repeats of one fault (seq 1..200), which the shared
    subscription spreads over every member, make one thread: one alert mail and follow-ups
    whose counts add up to 200, all referring to the alert mail."""
    window = 5.0
    members = group("shared", SHARED, mail={"repeat_window": window})
    members.wait_formed()
    publish_many(mosquitto, [fault("pump-17", seq) for seq in range(1, 201)])

    def counted() -> int:
        unique = {_mid(m): m for m in relay.mails}
        return sum(repeats_counted(m) for m in unique.values())

    wait_until(lambda: counted() >= 200, 30, lambda: f"200 counted (have {counted()})", members)
    time.sleep(window + 2)  # a second thread's follow-up would show up by now
    mails = list({_mid(m): m for m in relay.mails}.values())
    shown = [(mail_kind(m), _mid(m), repeats_counted(m)) for m in mails]
    detail = f"{shown}\n{members.diagnostics()}"
    alerts = _by_kind(mails, "alert")
    followups = _by_kind(mails, "followup")
    assert len(alerts) == 1 and followups, detail
    assert len(alerts) + len(followups) == len(mails), detail
    assert sum(repeats_counted(m) for m in mails) == 200, detail
    root = _mid(alerts[0])
    assert root.startswith(f"<faultmail.{GROUP}.alert."), root
    for mail in followups:
        assert _header(mail, "In-Reply-To") == root, detail
        assert root in _header(mail, "References").split(), detail


def test_hand_written_share_filter_is_refused_in_a_group(
    group: GroupFactory,
) -> None:
    """A $share/ filter in mqtt.topics of a shared-mode member: `config check` and the
    daemon's start both stop with exit 2 naming mqtt.topics and the fix (the plain filter;
    faultmail subscribes with $share/<group>/ itself)."""
    members = group(
        "shared",
        ["gw-a"],
        start=False,
        mqtt={"topics": [f"$share/{GROUP}/devices/+/fault"]},
    )
    dm = members["gw-a"].daemon
    result = dm.cli("config", "check")
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert "mqtt.topics" in result.stderr, result.stderr
    assert "'devices/+/fault'" in result.stderr and 'mode = "shared"' in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(DaemonError, match="exited with 2"):
        dm.start()
    assert "mqtt.topics" in dm.log_text()


def test_standby_clean_stop_hands_the_lease_over_within_seconds(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Standby mode: the lease names one member; SIGTERM on it clears the lease on the way
    out, the standby holds it within a few seconds, and every alert of a stream running
    across the handover is mailed, duplicates only with one Message-ID."""
    members = group(
        "standby",
        ["gw-a", "gw-b"],
        start=False,
        delivery=FAST_DELIVERY,
        mqtt={"keepalive": 5},
        mail=NO_DIGESTS,
    )
    members.start("gw-a")
    wait_until(lambda: members.lease() == "gw-a", 15, lambda: "gw-a to hold the lease", members)
    members.start("gw-b")
    members.wait_formed()
    assert members.lease() == "gw-a"
    assert (members["gw-b"].view() or {}).get("role") == "standby"
    messages = faults(200, devices=10)
    with DevicePublisher(mosquitto, messages, rate=40) as publisher:
        wait_until(lambda: publisher.acked >= 60, 20, lambda: "60 PUBACKs", members)
        code, _seconds = members["gw-a"].daemon.terminate()
        stopped = time.monotonic()
        wait_until(lambda: members.lease() == "gw-b", 10, lambda: "gw-b to take the lease", members)
        handover = time.monotonic() - stopped
        assert publisher.wait(30), publisher.summary()
    assert code == 0, members.diagnostics()
    # lease_settle (0.5 s) plus reading the lease: far below takeover_after's crash path.
    assert handover < 5.0, f"handover took {handover:.1f} s\n{members.diagnostics()}"
    wanted = set(publisher.published)

    def missing() -> set[tuple[str, int]]:
        return wanted - {key for m in relay.mails if (key := mail_alert_key(m)) is not None}

    def missing_where() -> str:
        gone = missing()
        rows = {
            member.instance: sorted(
                (r["uid"], r["seq"], r["state"])
                for r in member.alerts()
                if (r["uid"], r["seq"]) in gone
            )[:5]
            for member in members
        }
        return f"{len(wanted)} alerts at the relay; {len(gone)} missing: {sorted(gone)[:5]}; {rows}"

    wait_until(lambda: not missing(), 30, missing_where, members)
    ids: dict[tuple[str, int], set[str]] = {}
    for mail in relay.mails:
        key = mail_alert_key(mail)
        if key is not None:
            ids.setdefault(key, set()).add(_mid(mail))
    assert all(len(v) == 1 for v in ids.values()), [k for k, v in ids.items() if len(v) > 1]
    view = members["gw-b"].view() or {}
    assert view.get("role") == "active" and view.get("lease") == "gw-b", view
    gone = members.status("gw-a") or {}
    assert gone.get("state") == "offline", gone
