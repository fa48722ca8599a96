"""A member of a faultmail group dies for good (SIGKILL, never restarted) while 30 devices
stream 3,000 alerts (issue 17): the survivors take over what it held, at the broker and in
its retained held records, so every alert reaches the relay at least once; the only
duplicates are copies with the alert's one group Message-ID.

Alerts are identified at the relay by what the mail says (device header, Sequence line), not
by any member's alert ids, which differ per member. The figures go into the fault report:
published / delivered / duplicated / lost, with stranded (alerts a dead member accepted and
nobody mailed), mode and members in the notes.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.failpoints import LATE_S
from agent.identity import alert_identity, group_message_id
from tests.conftest import GroupFactory
from tests.faults.conftest import report_row
from tests.faults.load import DevicePublisher, Message, faults, key_of
from tests.faults.support import FAST_DELIVERY
from tests.harness.group import GROUP, Group, Member, wait_until
from tests.harness.publisher import publish_many
from tests.harness.relay import ReceivedMail, Relay
from tests.integration.support import mail_alert_key, mail_kind

pytestmark = pytest.mark.integration

Key = tuple[str, int]

ALERTS = 3000
DEVICES = 30
KILL_AFTER = 1000  # PUBACKed device messages before the member dies
RATE = 150.0  # device messages per second, all devices together
DOMAIN = "example.com"  # of smtp.from: the Message-IDs' right-hand side

# One mail per alert, so that every mail names its alert: no repeat grouping (the fixtures'
# repeat_window 0), no per-device budget, and a digest threshold no backlog here reaches (an
# adopted batch would otherwise go out as digests, which list alerts by message text only).
ONE_MAIL_PER_ALERT: dict[str, Any] = {"repeat_window": 0, "device_budget": 0}
NO_DIGESTS = 100_000
# Shortest keepalive the config allows (mqtt.keepalive >= 5): a SIGKILLed member's socket
# closes at once anyway, but a half-open one would be noticed within 1.5 x keepalive.
KEEPALIVE = 5
STRANDED = "accepted by the dead member, never mailed"
FAILPOINTS = "FAULTMAIL_FAILPOINTS"


@dataclass
class GroupFigures:
    published: int
    delivered: int
    duplicated: int
    lost: int
    stranded: int  # lost, and accepted by the dead member (in its outbox or held records)
    pending: int  # alerts still pending in a survivor's outbox at the end
    held_left: list[str]  # retained held records left at the broker at the end
    mails: int
    problems: list[str] = field(default_factory=list)
    lost_detail: list[str] = field(default_factory=list)


def expected_message_id(message: Message) -> str:
    """The group Message-ID the spec gives this device message's alert mail."""
    _topic, payload = message
    uid, seq = key_of(message)
    identity = alert_identity(GROUP, uid, "E042", seq, payload)
    return group_message_id(GROUP, "alert", identity, DOMAIN)


class RelayKeys:
    """The alert keys the relay has mail for, read incrementally (the relay's list only
    grows; parsing 3,000 bodies on every poll would take CPU from the daemons)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.seen = 0
        self.keys: set[Key] = set()

    def now(self) -> set[Key]:
        mails = self.relay.mails
        for mail in mails[self.seen :]:
            if (key := mail_alert_key(mail)) is not None:
                self.keys.add(key)
        self.seen = len(mails)
        return self.keys


def account_group(
    messages: list[Message],
    published: Iterable[Key],
    mails: list[ReceivedMail],
    survivors: dict[str, list[dict[str, Any]]],
    dead: dict[str, list[dict[str, Any]]],
    held_left: list[str],
) -> GroupFigures:
    """Compare what the devices published with what the relay got and the members hold."""
    by_key = {key_of(m): m for m in messages}
    keys = set(published)
    problems: list[str] = []
    copies: dict[Key, int] = defaultdict(int)
    ids_of_key: dict[Key, set[str | None]] = defaultdict(set)
    keys_of_id: dict[str | None, set[Key]] = defaultdict(set)
    for mail in mails:
        kind = mail_kind(mail)
        key = mail_alert_key(mail)
        if kind != "alert" or key is None:
            problems.append(
                f"unexpected {kind or 'unknown'} mail {mail.message_id}: {mail.subject}"
            )
            continue
        # A 67-character group Message-ID is folded onto its own line (RFC 5322 2.2.3); the
        # parsed value keeps the folding space.
        message_id = (mail.message_id or "").strip() or None
        copies[key] += 1
        ids_of_key[key].add(message_id)
        keys_of_id[message_id].add(key)
    for key, ids in sorted(ids_of_key.items()):
        if len(ids) > 1:
            problems.append(
                f"{key} reached the relay under {len(ids)} Message-IDs: {sorted(map(str, ids))}"
            )
        if key not in by_key:
            problems.append(f"{key} was mailed but never published")
        elif (want := expected_message_id(by_key[key])) not in ids:
            problems.append(f"{key} mailed as {sorted(map(str, ids))}, the spec says {want}")
    for message_id, shared in keys_of_id.items():
        if len(shared) > 1:
            problems.append(f"{message_id} names {len(shared)} alerts: {sorted(shared)[:3]}")

    pending = [
        f"{name}: {row['uid']} seq {row['seq']} ({row.get('reason')})"
        for name, rows in survivors.items()
        for row in rows
        if row.get("state") == "pending"
    ]
    if pending:
        problems.append(f"{len(pending)} alerts still pending at survivors, e.g. {pending[:3]}")
    accepted_by_dead = {
        (str(row["uid"]), int(row["seq"]))
        for rows in dead.values()
        for row in rows
        if row.get("seq") is not None
    }
    lost = sorted(keys - copies.keys())
    stranded = [key for key in lost if key in accepted_by_dead]
    return GroupFigures(
        published=len(keys),
        delivered=len(keys & copies.keys()),
        duplicated=sum(n - 1 for n in copies.values()),
        lost=len(lost),
        stranded=len(stranded),
        pending=len(pending),
        held_left=held_left,
        mails=len(mails),
        problems=problems,
        lost_detail=[
            f"{key}: {STRANDED if key in stranded else 'no mail, not accepted by the dead member'}"
            for key in lost[:10]
        ],
    )


def record(
    request: pytest.FixtureRequest, figures: GroupFigures, notes: str, started: float
) -> None:
    """A row of the fault report (tests/faults/conftest.py prints and saves the table)."""
    remarks = [notes, f"stranded={figures.stranded}", f"mails={figures.mails}"]
    if figures.pending:
        remarks.append(f"pending={figures.pending}")
    if figures.held_left:
        remarks.append(f"held_left={len(figures.held_left)}: {figures.held_left[0]}")
    report_row(
        request,
        started,
        remarks,
        published=figures.published,
        delivered=figures.delivered,
        duplicated=figures.duplicated,
        lost=figures.lost,
        mails=figures.mails,
        duplicate_mails=figures.duplicated,
        states={},
        problems=figures.problems,
        lost_detail=figures.lost_detail,
    )


def settle_group(
    group: Group, relay: Relay, keys: set[Key], survivors: list[Member], timeout: float
) -> None:
    """Wait until the relay has a mail for every published key, then until no survivor has
    an alert pending; return at the deadline either way (the accounting says what is missing)."""
    deadline = time.monotonic() + timeout
    at_relay = RelayKeys(relay)
    while not keys <= at_relay.now() and time.monotonic() < deadline:
        time.sleep(0.5)
    while time.monotonic() < deadline:
        if all(row["state"] != "pending" for m in survivors for row in m.alerts()):
            return
        time.sleep(0.5)


def held_after(group: Group, timeout: float) -> list[str]:
    """Topics of the retained held records left once they stop going away (at most timeout
    seconds), with the device message each holds."""
    deadline = time.monotonic() + timeout
    while (left := group.held()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [f"{topic} {held_message(payload)}" for topic, payload in sorted(left.items())]


def held_message(payload: bytes) -> str:
    """The device topic and seq a held record carries (spec: topic, base64 payload)."""
    try:
        record = json.loads(payload)
        inner = json.loads(base64.b64decode(record["payload"]))
        return f"({record['topic']} seq {inner.get('seq')})"
    except (ValueError, KeyError, TypeError) as error:
        return f"(unreadable: {error}: {payload[:80]!r})"


def run_stream_and_kill(
    group: Group, victim: Member, protocol: str
) -> tuple[list[Message], list[Key], int]:
    """Stream ALERTS device messages; SIGKILL victim once KILL_AFTER are PUBACKed; return
    the messages, the keys published and how many were PUBACKed at the kill."""
    messages = faults(ALERTS, devices=DEVICES)
    with DevicePublisher(group.broker, messages, rate=RATE, protocol=protocol) as publisher:
        wait_until(
            lambda: publisher.acked >= KILL_AFTER,
            60,
            lambda: f"{KILL_AFTER} PUBACKs ({publisher.summary()})",
            group,
        )
        at_kill = publisher.acked
        victim.daemon.kill()
        assert publisher.wait(60), f"{publisher.summary()}\n{group.diagnostics()}"
    return messages, publisher.published, at_kill


def member_config(protocol: str) -> dict[str, Any]:
    return {
        "mqtt": {"protocol": protocol, "keepalive": KEEPALIVE},
        "delivery": FAST_DELIVERY,
        "mail": {**ONE_MAIL_PER_ALERT, "digest_threshold": NO_DIGESTS},
    }


def settle_and_account(
    request: pytest.FixtureRequest,
    members: Group,
    relay: Relay,
    run: tuple[list[Message], list[Key], int],
    victim: Member,
    notes: str,
    started: float,
) -> GroupFigures:
    """Wait for the survivors to finish, account, write the report row, assert the invariants
    (problems, lost, stranded, pending, held records left)."""
    messages, published, at_kill = run
    survivors = [m for m in members if m is not victim]
    streamed = time.monotonic()
    settle_group(members, relay, set(published), survivors, timeout=90)
    held_left = held_after(members, 10)
    figures = account_group(
        messages,
        published,
        relay.mails,
        {m.instance: m.alerts() for m in survivors},
        {victim.instance: victim.alerts()},
        held_left,
    )
    timing = f"stream {streamed - started:.0f} s, settle {time.monotonic() - streamed:.0f} s"
    record(request, figures, f"{notes} SIGKILLed at {at_kill} PUBACKed; {timing}", started)
    detail = members.diagnostics()
    assert not figures.problems, "\n".join(figures.problems[:20]) + "\n" + detail
    assert figures.lost == 0 and figures.stranded == 0, "\n".join(figures.lost_detail) + detail
    assert figures.delivered == ALERTS, detail
    assert not figures.held_left, "\n".join(figures.held_left) + "\n" + detail
    assert all(m.daemon.running for m in survivors), detail
    return figures


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_shared_member_sigkilled_mid_stream_strands_nothing(
    request: pytest.FixtureRequest, group: GroupFactory, relay: Relay, protocol: str
) -> None:
    """Shared mode, 3 members: one is SIGKILLed after 1,000 of 3,000 alerts and never comes
    back; the two survivors adopt its broker session and held records, so every alert is
    mailed, none waits at a survivor, and duplicates carry the alert's one Message-ID."""
    members = group("shared", ["gw-a", "gw-b", "gw-c"], **member_config(protocol))
    members.wait_formed()
    started = time.monotonic()
    victim = members["gw-b"]
    run = run_stream_and_kill(members, victim, protocol)
    notes = f"mode=shared; members=3; mqtt={protocol}; gw-b"
    settle_and_account(request, members, relay, run, victim, notes, started)
    offline = members.status("gw-b")
    assert offline is not None and offline.get("state") == "offline", offline


def test_standby_active_sigkilled_mid_stream_strands_nothing(
    request: pytest.FixtureRequest, group: GroupFactory, relay: Relay
) -> None:
    """Standby mode, 2 members: the active one is SIGKILLed after 1,000 of 3,000 alerts and
    never comes back; the standby takes the lease, becomes active and mails every alert,
    duplicates only with the alert's one Message-ID."""
    members = group("standby", ["gw-a", "gw-b"], start=False, **member_config("5"))
    members.start("gw-a")
    wait_until(lambda: members.lease() == "gw-a", 15, lambda: "gw-a to hold the lease", members)
    members.start("gw-b")
    members.wait_formed()
    assert members.lease() == "gw-a"
    started = time.monotonic()
    active, standby = members["gw-a"], members["gw-b"]
    run = run_stream_and_kill(members, active, "5")
    wait_until(lambda: members.lease() == "gw-b", 20, lambda: "gw-b to take the lease", members)
    notes = "mode=standby; members=2; mqtt=5; active gw-a"
    settle_and_account(request, members, relay, run, active, notes, started)
    view = standby.view() or {}
    assert view.get("role") == "active" and view.get("lease") == "gw-b", view
    status = members.status("gw-b") or {}
    assert status.get("role") == "active" and status.get("state") == "online", status


def test_a_held_record_published_after_its_alert_was_mailed_is_still_cleared(
    request: pytest.FixtureRequest, group: GroupFactory, relay: Relay
) -> None:
    """Shared mode, 2 members: the intake publishes a batch's held records after the commit,
    and until then the delivery loop may mail those alerts and the group's sweep clear the
    records of settled alerts. The failpoint held_record_late holds each member's intake
    LATE_S seconds in that window, longer than a poll, a mail and a sweep: every alert is
    mailed once and every held record is still cleared (a record left behind would be fed
    into the intake of whoever adopts the member some day: a second mail for an old alert)."""
    members = group("shared", ["gw-a", "gw-b"], start=False, **member_config("5"))
    for member in members:
        member.daemon.env[FAILPOINTS] = "held_record_late"
    members.start()
    members.wait_formed()
    started = time.monotonic()
    messages = faults(6, devices=6)
    publish_many(members.broker, messages, timeout=60)
    published = [key_of(m) for m in messages]
    settle_group(members, relay, set(published), list(members), timeout=30)
    held_left = held_after(members, 3 * LATE_S + 5)
    figures = account_group(
        messages, published, relay.mails, {m.instance: m.alerts() for m in members}, {}, held_left
    )
    record(request, figures, f"mode=shared; members=2; held_record_late {LATE_S} s", started)
    detail = members.diagnostics()
    assert not figures.problems, "\n".join(figures.problems) + "\n" + detail
    assert figures.delivered == len(messages) and figures.duplicated == 0, detail
    assert not figures.held_left, "\n".join(figures.held_left) + "\n" + detail
