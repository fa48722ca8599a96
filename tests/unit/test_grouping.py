"""Grouping: one mail per problem. Driven through the real outbox with a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from agent.compose import ComposeContext, compose
from agent.models import AlertState, Decision, Fault, FaultState, MailKind, RawMessage, Severity
from agent.outbox import AuditEntry, Outbox
from agent.planner import GroupingRules, plan_mails

RULES = GroupingRules(repeat_window=600.0, digest_threshold=20)
CTX = ComposeContext(
    sender="GW <gw@example.com>", gateway_id="gw-1", site="Brno", timezone="Europe/Prague"
)


class Harness:
    """An outbox plus a clock: store alerts at a time, plan, send everything due."""

    def __init__(self, path: Path) -> None:
        self.outbox = Outbox(path)
        self.now = 1_800_000_000.0
        self.seq = 0
        self.sent: list[tuple[MailKind, list[int], str, str | None]] = []

    def alert(
        self,
        uid: str = "pump-17",
        code: str = "E042",
        *,
        severity: Severity = Severity.CRITICAL,
        state: FaultState = FaultState.ACTIVE,
    ) -> None:
        self.seq += 1
        raw = RawMessage(
            topic=f"devices/{uid}/fault",
            payload=str(self.seq).encode(),
            mid=1,
            qos=1,
            dup=False,
            received_at=self.now,
        )
        fault = Fault(
            uid=uid, code=code, severity=severity, message="Overpressure", state=state, seq=self.seq
        )
        self.outbox.ingest(
            [
                Decision(
                    raw=raw,
                    fault=fault,
                    state=AlertState.PENDING,
                    recipients=("ops@example.com",),
                    uid=uid,
                )
            ]
        )

    def tick(self, seconds: float = 0.0) -> list[tuple[MailKind, list[int], str, str | None]]:
        """Advance the clock, plan, and 'send' every due mail; return what went out."""
        self.now += seconds
        plan_mails(self.outbox, self.now, "example.com", "gw-1", RULES)
        out = []
        for mail in self.outbox.claim_due(self.now, 1000):
            msg = message_from_bytes(compose(mail, CTX, self.now).as_bytes(), policy=policy.default)
            out.append(
                (mail.kind, [a.id for a in mail.alerts], str(msg["Subject"]), msg["In-Reply-To"])
            )
            self.outbox.mark_sent(mail, self.now, AuditEntry("send_attempt", "sent", mail.id))
        self.sent += out
        return out


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "outbox.db")
    yield harness
    harness.outbox.close()


def test_first_alert_goes_out_at_once(h: Harness) -> None:
    """A new device + code problem is mailed in the same pass, no group wait."""
    h.alert()
    ((kind, ids, subject, reply_to),) = h.tick()
    assert (kind, ids, reply_to) == (MailKind.ALERT, [1], None)
    assert subject == "[CRITICAL] pump-17 E042: Overpressure"


def test_200_repeats_make_two_mails(h: Harness) -> None:
    """200 repeats within one window: the first at once, the other 199 as one follow-up."""
    for i in range(200):
        h.alert()
        h.tick(1.0 if i else 0.0)
    assert len(h.sent) == 1
    followup = h.tick(600.0)
    assert len(followup) == 1
    kind, ids, subject, reply_to = followup[0]
    assert kind is MailKind.FOLLOWUP and len(ids) == 199
    assert subject.startswith("Re: [CRITICAL] pump-17 E042")
    assert reply_to is not None and reply_to.startswith("<faultmail.gw-1.")
    assert all(a["state"] == "sent" for a in h.outbox.alerts())
    assert h.tick(600.0) == []  # the window restarted and stayed quiet


def test_followup_body_counts_and_since(h: Harness) -> None:
    """The follow-up says how many more times and since when (local time zone)."""
    h.alert()
    h.tick()
    for _ in range(37):
        h.alert()
    plan_mails(h.outbox, h.now + 601, "example.com", "gw-1", RULES)
    (mail,) = h.outbox.claim_due(h.now + 601, 10)
    text = compose(mail, CTX, h.now + 601).message().get_body(("plain",))
    assert text is not None
    assert "E042 on pump-17 occurred 37 more times since" in text.get_content()
    assert "CET" in text.get_content() or "CEST" in text.get_content()


def test_resolved_goes_out_at_once_in_thread_with_duration(h: Harness) -> None:
    """A resolve is mailed at once in the same thread, saying how long the problem lasted."""
    h.alert()
    h.tick()
    root = h.outbox.mails(("sent",)).__next__()["message_id"]
    h.alert(state=FaultState.RESOLVED)
    h.now += 3 * 3600 + 12 * 60
    plan_mails(h.outbox, h.now, "example.com", "gw-1", RULES)
    (mail,) = h.outbox.claim_due(h.now, 10)
    assert mail.kind is MailKind.RESOLVED and mail.thread_root == root
    msg = compose(mail, CTX, h.now).message()
    assert str(msg["Subject"]).startswith("[RESOLVED] pump-17 E042")
    assert msg["References"] == root
    body = msg.get_body(("plain",))
    assert body is not None and "RESOLVED: E042 on pump-17" in body.get_content()


def test_escalation_goes_out_at_once(h: Harness) -> None:
    """A repeat more severe than what was mailed does not wait for the window."""
    h.alert(severity=Severity.WARNING)
    h.tick()
    h.alert(severity=Severity.WARNING)
    assert h.tick(10) == []
    h.alert(severity=Severity.CRITICAL)
    ((kind, ids, subject, reply_to),) = h.tick(10)
    assert kind is MailKind.ALERT and ids == [2, 3] and reply_to is not None
    assert subject.startswith("[CRITICAL]")


def test_escalation_after_the_window_ended_opens_a_new_window(h: Harness) -> None:
    """An escalation that arrives after the previous window ended starts a window of its own:
    a repeat right after it is held for that window, not mailed at once."""
    h.alert(severity=Severity.WARNING)
    h.tick()
    h.alert(severity=Severity.CRITICAL)
    h.alert(severity=Severity.CRITICAL)
    ((kind, ids, subject, _),) = h.tick(700)  # the warning's window ended 100 s ago
    assert kind is MailKind.ALERT and ids == [2] and subject.startswith("[CRITICAL]")
    h.alert(severity=Severity.CRITICAL)
    assert h.tick(10) == []
    ((kind, ids, _, _),) = h.tick(600)
    assert kind is MailKind.FOLLOWUP and ids == [3, 4]


def test_other_devices_are_not_held_by_a_busy_one(h: Harness) -> None:
    """Grouping is per device + code: another device's first fault still goes out at once."""
    h.alert("pump-17")
    h.tick()
    h.alert("pump-17")
    h.alert("pump-18")
    ((kind, _, subject, _),) = h.tick(1)
    assert kind is MailKind.ALERT and "pump-18" in subject


def test_backlog_becomes_a_digest(h: Harness) -> None:
    """25 alerts waiting at once (after an outage) go out as one digest carrying them all."""
    for i in range(25):
        h.alert(f"pump-{i % 5}", code=f"E{i}")
    ((kind, ids, subject, _),) = h.tick()
    assert kind is MailKind.DIGEST and len(ids) == 25
    assert subject == "[DIGEST] 25 alerts from 5 device(s) on gw-1 (25 critical)"
    h.alert("pump-0", code="E0")
    assert h.tick(1) == []  # a repeat after the digest waits for its window


def test_retransmitted_seq_makes_no_second_mail(h: Harness) -> None:
    """The same device message twice (same seq and bytes) is stored once: one mail."""
    raw = RawMessage(
        topic="devices/p/fault", payload=b"x", mid=1, qos=1, dup=True, received_at=h.now
    )
    fault = Fault(uid="p", code="E1", severity=Severity.ERROR, message="m", seq=5)
    decision = Decision(
        raw=raw, fault=fault, state=AlertState.PENDING, recipients=("ops@example.com",), uid="p"
    )
    h.outbox.ingest([decision])
    h.outbox.ingest([decision])
    assert len(h.tick()) == 1 and len(list(h.outbox.alerts())) == 1
