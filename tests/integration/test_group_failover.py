"""Hostile failover of a faultmail group (issue 17), real daemons on one real Mosquitto and a
real relay:

- standby split brain: only the active member is cut from the broker (its control and data
  connections both run through a TCP fault proxy that goes silent) for longer than
  1.5 x keepalive; the broker publishes its Wills, the standby takes the lease and ingests;
  once the path is back the old active member steps down (exit 75, LeaseLost) and nothing
  published before, during or after the split is lost;
- shared mode: a SIGKILLed member comes back (same state dir and instance) before its
  takeover_after has run out, or while a survivor is draining its broker session; nothing is
  lost, no held record or pending alert is left;
- shared mode: a device blocked with `faultmail devices block` on one member is honoured by
  every member, and unblocked on another member for all of them (retained
  `faultmail/<group>/blocked/<uid>` set and cleared).

Alerts are identified at the relay by device header and Sequence line; the accounting is the
one of the fault tests (tests/faults/test_group_faults.py): every published alert mailed,
copies only under the alert's one group Message-ID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.group import rendezvous
from tests.conftest import GroupFactory
from tests.faults.load import DevicePublisher, Message, faults
from tests.faults.proxy import FaultProxy
from tests.faults.test_group_faults import (
    KEEPALIVE,
    account_group,
    held_after,
    member_config,
    settle_group,
)
from tests.harness.group import GROUP, Group, Member, wait_until
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault, mail_alert_key

pytestmark = pytest.mark.integration

Key = tuple[str, int]

SHARED = ["gw-a", "gw-b", "gw-c"]
EXIT_LEASE_LOST = 75
# The broker drops a silent client 1.5 x keepalive after its last packet (MQTT 5 3.1.2.10).
BROKER_TIMEOUT = 1.5 * KEEPALIVE


@pytest.fixture
def broker_proxy(mosquitto: Mosquitto) -> Iterator[FaultProxy]:
    """A TCP fault proxy in front of the broker (for one member's MQTT connections only)."""
    proxy = FaultProxy(mosquitto.host, mosquitto.port, name="broker-proxy").start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _merged(broker: Mosquitto, *parts: Group) -> Group:
    """One Group of members built by several `group()` calls (members configured apart)."""
    return Group(broker, GROUP, [member for part in parts for member in part])


def _via_proxy(config: dict[str, Any], proxy: FaultProxy) -> dict[str, Any]:
    """config with the member's MQTT port (control and data connection) on the proxy."""
    return {**config, "mqtt": {**config["mqtt"], "host": proxy.host, "port": proxy.port}}


def _records(who: Member, event: str, **fields: str) -> list[dict[str, Any]]:
    """The member's JSON log records with this event and these fields."""
    return [
        r
        for r in who.daemon.log_records()
        if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())
    ]


def _where(lost: list[Key], rows: dict[str, list[dict[str, Any]]], members: Group) -> str:
    """For a failing test: where each lost alert stands (rendezvous owner with every member
    live, and each member's outbox state for it), so a reader sees which path dropped it."""
    names = sorted(members.members)
    out = []
    for uid, seq in lost[:15]:
        held = {
            name: [r["state"] for r in member_rows if (r["uid"], r["seq"]) == (uid, seq)]
            for name, member_rows in rows.items()
        }
        out.append(f"  {uid} seq {seq}: owner {rendezvous(uid, names)}, outboxes {held}")
    return "\n".join(out)


def _account(members: Group, relay: Relay, messages: list[Message], published: list[Key]) -> None:
    """Wait for the group to finish (bounded), then account over every member and assert the
    invariants of a group run: nothing lost, one Message-ID per alert, nothing left held or
    pending."""
    settle_group(members, relay, set(published), list(members), timeout=40)
    held_left = held_after(members, 10)
    rows = {m.instance: m.alerts() for m in members}
    figures = account_group(messages, published, relay.mails, rows, {}, held_left)
    summary = (
        f"published={figures.published} delivered={figures.delivered} "
        f"duplicated={figures.duplicated} lost={figures.lost} pending={figures.pending} "
        f"held_left={len(figures.held_left)} mails={figures.mails}"
    )
    detail = f"{summary}\n{members.diagnostics()}"
    assert not figures.problems, "\n".join(figures.problems[:20]) + "\n" + detail
    lost = sorted(set(published) - _mailed(relay))
    assert not lost, f"{len(lost)} alerts never mailed:\n{_where(lost, rows, members)}\n{detail}"
    assert figures.delivered == len(set(published)), detail
    assert not figures.held_left, "\n".join(figures.held_left[:10]) + "\n" + detail


def _mailed(relay: Relay) -> set[Key]:
    """(uid, seq) of every alert the relay has a mail for."""
    return {key for mail in relay.mails if (key := mail_alert_key(mail)) is not None}


# ---- 1. standby split brain ------------------------------------------------------------------

SPLIT_ALERTS = 800
SPLIT_RATE = 25.0  # 32 s of stream: before, through and well after the split


def test_standby_split_brain_old_active_steps_down(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay, broker_proxy: FaultProxy
) -> None:
    """Standby mode, 2 members; the active one reaches the broker only through a proxy that
    goes silent for longer than 1.5 x keepalive. The broker's Wills clear its lease and status,
    the standby takes the lease and ingests. When the path is back the old active member steps
    down (exit 75, LeaseLost); every alert published before, during and after is mailed,
    copies only under one Message-ID; the lease names the new active member, also after the
    old one restarts (as a standby)."""
    config = member_config("5")
    members = _merged(
        mosquitto,
        group("standby", ["gw-a"], start=False, **_via_proxy(config, broker_proxy)),
        group("standby", ["gw-b"], start=False, **config),
    )
    old, new = members["gw-a"], members["gw-b"]
    members.start("gw-a")
    wait_until(lambda: members.lease() == "gw-a", 15, lambda: "gw-a to hold the lease", members)
    members.start("gw-b")
    members.wait_formed()
    assert (new.view() or {}).get("role") == "standby", new.view()

    messages = faults(SPLIT_ALERTS, devices=10)
    with DevicePublisher(mosquitto, messages, rate=SPLIT_RATE) as publisher:
        wait_until(lambda: publisher.acked >= 60, 20, lambda: publisher.summary(), members)
        broker_proxy.blackhole()
        cut = time.monotonic()
        wait_until(
            lambda: members.lease() == "gw-b",
            BROKER_TIMEOUT + 15,
            lambda: "gw-b to take the lease of the silent active member",
            members,
        )
        took_lease = time.monotonic() - cut
        # The new active member ingests while the old one is still cut off.
        wait_until(
            lambda: (new.view() or {}).get("role") == "active",
            10,
            lambda: "gw-b to become active",
            members,
        )
        time.sleep(3)
        assert old.daemon.running, f"gw-a exited during the split\n{members.diagnostics()}"
        broker_proxy.pass_()
        healed = time.monotonic()
        sent_at_heal = publisher.sent
        wait_until(
            lambda: not old.daemon.running,
            30,
            lambda: "the old active member gw-a to step down",
            members,
        )
        stepped_down = time.monotonic() - healed
        code = old.daemon.wait(1)
        assert publisher.wait(60), f"{publisher.summary()}\n{members.diagnostics()}"
        sent_after = len(messages) - sent_at_heal

    timing = f"lease taken {took_lease:.1f} s after the cut, gw-a out {stepped_down:.1f} s after"
    detail = f"{timing}\n{members.diagnostics()}"
    assert code == EXIT_LEASE_LOST, detail
    lost_lease = [
        r
        for r in _records(old, "stage_failed")
        if str(r.get("error", "")).startswith("LeaseLost") and "gw-b" in str(r.get("error"))
    ]
    assert lost_lease, f"no LeaseLost naming gw-b in gw-a's log\n{detail}"
    # The broker notices the silence on its own loop after BROKER_TIMEOUT; then the Will, our
    # 0.25 s lease tick and lease_settle. 13.2 s was seen on a loaded 2-core machine.
    assert took_lease <= BROKER_TIMEOUT + 10, detail
    assert sent_after > 0, detail  # alerts were also published after the heal
    assert new.daemon.running, detail
    assert members.lease() == "gw-b", detail
    # gw-b was a standby before the split: whatever it holds it ingested as the new active one.
    assert new.alerts(), detail

    # systemd restarts the old member: it comes back as a standby and mails what it still had.
    old.daemon.start()
    wait_until(
        lambda: (
            (old.view() or {}).get("role") == "standby"
            and (old.view() or {}).get("lease") == "gw-b"
        ),
        15,
        lambda: "gw-a back as a standby seeing gw-b's lease",
        members,
    )
    _account(members, relay, messages, publisher.published)
    assert members.lease() == "gw-b", members.diagnostics()
    assert (new.view() or {}).get("role") == "active", members.diagnostics()
    status = members.status("gw-b") or {}
    assert status.get("role") == "active" and status.get("state") == "online", status
    assert old.daemon.running and new.daemon.running, members.diagnostics()


# ---- 2. shared mode: the member comes back while it may be adopted ----------------------------

BACK_ALERTS = 1200
BACK_RATE = 60.0
KILL_AT = 300  # PUBACKed device messages before the SIGKILL


@pytest.mark.parametrize(
    ("back", "takeover_after"), [("before_takeover", 3.0), ("during_takeover", 2.0)]
)
def test_shared_member_back_in_the_takeover_window(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay, back: str, takeover_after: float
) -> None:
    """Shared mode, 3 members: gw-b is SIGKILLed mid-stream and restarted with its own state
    dir and instance, either at once (back before takeover_after runs out: nobody adopts it)
    or once a survivor has adopted it and connected with its client id (back while its
    session is being drained: the broker hands the session back). Every alert is mailed,
    copies only under one Message-ID, no held record and no pending alert is left."""
    members = group(
        "shared", SHARED, cluster={"takeover_after": takeover_after}, **member_config("5")
    )
    members.wait_formed()
    victim = members["gw-b"]
    survivors = [m for m in members if m is not victim]

    def adopted(event: str) -> list[dict[str, Any]]:
        return [r for m in survivors for r in _records(m, event, member="gw-b")]

    messages = faults(BACK_ALERTS, devices=30)
    with DevicePublisher(mosquitto, messages, rate=BACK_RATE) as publisher:
        wait_until(lambda: publisher.acked >= KILL_AT, 30, lambda: publisher.summary(), members)
        victim.daemon.kill()
        killed = time.monotonic()
        if back == "during_takeover":
            wait_until(
                lambda: adopted("takeover_connected"),
                takeover_after + 15,
                lambda: "a survivor to connect with gw-b's client id",
                members,
            )
        victim.daemon.start()
        returned = time.monotonic() - killed
        sent_at_return = publisher.sent
        members.wait_formed(SHARED)
        assert publisher.wait(60), f"{publisher.summary()}\n{members.diagnostics()}"

    detail = f"gw-b back {returned:.1f} s after the SIGKILL\n{members.diagnostics()}"
    assert sent_at_return < len(messages), detail  # the stream went on after its return
    if back == "before_takeover":
        assert not adopted("member_adopted"), detail
    else:
        assert adopted("member_adopted"), detail
    _account(members, relay, messages, publisher.published)
    assert all(m.daemon.running for m in members), members.diagnostics()
    assert not any((m.view() or {}).get("adopted") for m in members), members.diagnostics()


# ---- 3. shared mode: a block by hand, for the whole group ---------------------------------------

ROGUE = "pump-x"
OTHERS = [f"pump-{d}" for d in range(6)]


def _device_rows(member: Member, uid: str) -> dict[str, Any]:
    result = member.daemon.cli("devices", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return next((row for row in rows if row.get("uid") == uid), {})


def _publish_round(mosquitto: Mosquitto, rogue_seqs: range, other_seq: int) -> set[Key]:
    """The rogue's seqs interleaved with one alert of every other device; the others' keys."""
    batch = [fault(ROGUE, seq) for seq in rogue_seqs]
    batch += [fault(uid, other_seq) for uid in OTHERS]
    publish_many(mosquitto, batch, timeout=20)
    return {(uid, other_seq) for uid in OTHERS}


def test_shared_block_by_hand_holds_for_every_member(
    group: GroupFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Shared mode, 3 members: `faultmail devices block` on gw-a publishes the retained block
    record and every member drops the device's alerts (whichever member the broker hands them
    to); `faultmail devices unblock` on gw-b clears the record and every member mails the
    device's next alerts."""
    members = group("shared", SHARED)
    members.wait_formed()
    a, b = members["gw-a"], members["gw-b"]
    blocked_topic = members.topic("blocked", ROGUE)

    wanted = _publish_round(mosquitto, range(1, 4), 1) | {(ROGUE, s) for s in range(1, 4)}
    wait_until(lambda: wanted <= _mailed(relay), 20, lambda: "the first round mailed", members)

    result = a.daemon.cli("devices", "block", ROGUE, "--reason", "failover test")
    assert result.returncode == 0, result.stderr + result.stdout
    wait_until(
        lambda: ROGUE in members.blocked(), 10, lambda: f"the retained {blocked_topic}", members
    )
    record = members.blocked()[ROGUE]
    assert record.get("uid") == ROGUE and record.get("by") == "gw-a", record
    wait_until(
        lambda: all(_device_rows(m, ROGUE).get("state") == "blocked" for m in members),
        10,
        lambda: f"every member to list {ROGUE} as blocked",
        members,
    )

    blocked_seqs = range(4, 34)
    others = _publish_round(mosquitto, blocked_seqs, 2)
    wait_until(lambda: others <= _mailed(relay), 20, lambda: "the others' second round", members)
    wait_until(
        lambda: (
            sum(int(_device_rows(m, ROGUE).get("dropped") or 0) for m in members)
            >= len(blocked_seqs)
        ),
        10,
        lambda: f"every blocked {ROGUE} alert counted as dropped by some member",
        members,
    )
    time.sleep(2)  # room for a mail a member should not have sent
    dropped = {m.instance: int(_device_rows(m, ROGUE).get("dropped") or 0) for m in members}
    leaked = sorted(s for uid, s in _mailed(relay) if uid == ROGUE and s in blocked_seqs)
    detail = f"dropped per member {dropped}\n{members.diagnostics()}"
    assert not leaked, f"{ROGUE} mailed while blocked: seq {leaked}\n{detail}"
    assert sum(dropped.values()) == len(blocked_seqs), detail
    # The broker spreads the device's messages over all members: each one honoured the block.
    assert all(dropped.values()), detail

    result = b.daemon.cli("devices", "unblock", ROGUE)
    assert result.returncode == 0, result.stderr + result.stdout
    wait_until(
        lambda: ROGUE not in members.blocked(),
        10,
        lambda: f"{blocked_topic} to be cleared",
        members,
    )
    wait_until(
        lambda: all(_device_rows(m, ROGUE).get("state") != "blocked" for m in members),
        10,
        lambda: f"every member to list {ROGUE} as not blocked",
        members,
    )
    after = range(34, 40)
    wanted = _publish_round(mosquitto, after, 3) | {(ROGUE, s) for s in after}
    wait_until(
        lambda: wanted <= _mailed(relay),
        20,
        lambda: f"{ROGUE}'s alerts after the unblock (missing {sorted(wanted - _mailed(relay))})",
        members,
    )
    time.sleep(2)  # a member that published the block again would have done so by now
    assert ROGUE not in members.blocked(), members.diagnostics()
    assert all(_device_rows(m, ROGUE).get("state") != "blocked" for m in members)
