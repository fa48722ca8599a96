"""Flood-guard evasion by rotating fault codes (issue 14, item 7), through the real outbox.

A device under the block threshold that sends a new fault code with every message opens a new
thread per code; it must not get a mail per message (the device budget), it must be reported
(code rotation), and it must not take every slot of the per-minute cap (fair claim order).
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from agent.compose import ComposeContext, compose
from agent.models import DeviceDelta, Mail, MailKind, Severity
from agent.outbox import AuditEntry, Outbox
from agent.planner import GroupingRules, plan_mails
from tests.unit.conftest import pending_decision

T0 = 1_800_000_000.0
RULES = GroupingRules(
    repeat_window=600.0,
    digest_threshold=1000,
    device_budget=5,
    device_window=60.0,
    rotation_codes=10,
    security=("security@example.com",),
)
CTX = ComposeContext(sender="GW <gw@example.com>", gateway_id="gw-1", site="Brno", timezone="UTC")


class Site:
    """An outbox, a clock and every mail that went out (planned, claimed, marked sent)."""

    def __init__(self, outbox: Outbox, rules: GroupingRules = RULES) -> None:
        self.outbox = outbox
        self.rules = rules
        self.now = T0
        self.seq = 0
        self.sent: list[Mail] = []

    def alert(self, uid: str, code: str, severity: Severity = Severity.ERROR) -> None:
        self.seq += 1
        topic = f"devices/{uid}/fault"
        self.outbox.ingest(
            [pending_decision(self.seq, uid=uid, code=code, severity=severity, at=self.now)],
            [DeviceDelta(uid, topic, self.now, received=1)],
        )

    def tick(self, seconds: float = 0.0) -> list[Mail]:
        self.now += seconds
        plan_mails(self.outbox, self.now, "example.com", "gw-1", self.rules)
        out = self.outbox.claim_due(self.now, 1000)
        for mail in out:
            self.outbox.mark_sent(mail, self.now, AuditEntry("send_attempt", "sent", mail.id))
        self.sent += out
        return out

    def of(self, uid: str, kind: MailKind) -> list[Mail]:
        return [
            m
            for m in self.sent
            if m.kind is kind and (m.alerts[0].uid if m.alerts else (m.notice or {})["uid"]) == uid
        ]


def _rotate(site: Site, uid: str, n: int, start: int = 0) -> None:
    """n messages at 4 a second, each with a fault code never seen before."""
    for i in range(start, start + n):
        site.alert(uid, f"R{i:04d}")
        site.tick(0.25)


def test_rotating_codes_get_the_budget_then_one_digest(outbox: Outbox) -> None:
    """240 new codes in 60 s: 5 single mails, then everything else in one digest."""
    site = Site(outbox)
    _rotate(site, "rogue", 240)
    singles = site.of("rogue", MailKind.ALERT)
    assert len(singles) == 5
    assert site.of("rogue", MailKind.DIGEST) == []
    site.tick(60.0)  # the window of the fifth mail has passed
    (digest,) = site.of("rogue", MailKind.DIGEST)
    assert len(digest.alerts) == 235
    covered = {a.id for m in site.sent for a in m.alerts}
    assert covered == set(range(1, 241))  # every alert in exactly one mail
    assert sum(len(m.alerts) for m in site.sent) == 240


def test_a_device_within_its_budget_is_mailed_at_once(outbox: Outbox) -> None:
    """Five problems of one device (the budget) are five mails in the pass they arrive."""
    site = Site(outbox)
    for i in range(5):
        site.alert("pump-1", f"E{i}")
        assert [m.kind for m in site.tick(1.0)] == [MailKind.ALERT]


def test_a_spent_budget_holds_only_that_device(outbox: Outbox) -> None:
    """While the rogue's alerts wait, another device's new problem is mailed in its pass."""
    site = Site(outbox)
    _rotate(site, "rogue", 20)
    site.alert("pump-1", "E042")
    out = site.tick()
    assert [(m.kind, m.alerts[0].uid) for m in out] == [(MailKind.ALERT, "pump-1")]


def test_a_backlog_over_the_budget_is_one_digest_at_once(outbox: Outbox) -> None:
    """A device with no mail in the window whose backlog exceeds the budget: one digest now."""
    site = Site(outbox)
    for i in range(8):
        site.alert("pump-1", f"E{i}")
    (mail,) = site.tick()
    assert mail.kind is MailKind.DIGEST and len(mail.alerts) == 8


def test_code_rotation_is_one_security_notice_and_a_suspicious_count(outbox: Outbox) -> None:
    """rotation_codes distinct codes in the window: one notice saying so, suspicious + 1."""
    site = Site(outbox)
    _rotate(site, "rogue", 9)
    assert site.of("rogue", MailKind.SECURITY_NOTICE) == []
    _rotate(site, "rogue", 100, start=9)
    (notice,) = site.of("rogue", MailKind.SECURITY_NOTICE)
    assert notice.recipients == ("security@example.com",)
    assert site.of("rogue", MailKind.BLOCK_NOTICE) == []  # not blocked: operations unaffected
    msg = message_from_bytes(compose(notice, CTX, site.now).as_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "code rotation" in text and "NOT blocked" in text
    assert "R0000" in text  # the first codes it sent
    devices = {d["uid"]: d for d in outbox.devices()}
    assert devices["rogue"]["suspicious"] == 1
    assert devices["rogue"]["state"] == "ok"


def test_a_device_with_few_codes_is_not_suspicious(outbox: Outbox) -> None:
    """A real fault cascade below rotation_codes raises no notice."""
    site = Site(outbox)
    for i in range(9):
        site.alert("pump-1", f"E{i}")
        site.tick(5.0)
    assert site.of("pump-1", MailKind.SECURITY_NOTICE) == []
    assert {d["uid"]: d for d in outbox.devices()}["pump-1"]["suspicious"] == 0


def test_claim_order_is_critical_first_then_round_robin_across_devices(outbox: Outbox) -> None:
    """A device with many due mails takes one turn per round, not every slot."""
    rules = GroupingRules(repeat_window=0.0)
    site = Site(outbox, rules)
    for i in range(6):
        site.alert("rogue", f"R{i}")
    site.alert("pump-1", "E1")
    site.alert("pump-2", "E2", Severity.CRITICAL)
    site.alert("pump-1", "E3")
    plan_mails(outbox, site.now, "example.com", "gw-1", rules)
    order = [(m.alerts[0].uid, m.alerts[0].code) for m in outbox.claim_due(site.now, 5)]
    assert order == [
        ("pump-2", "E2"),
        ("rogue", "R0"),
        ("pump-1", "E1"),
        ("rogue", "R1"),
        ("pump-1", "E3"),
    ]
