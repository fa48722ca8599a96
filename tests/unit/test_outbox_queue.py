"""outbox.queue: claiming due mails and recording outcomes, each with its audit row."""

from __future__ import annotations

from agent.models import Decision, Severity
from agent.outbox import AuditEntry, MailState, Outbox
from agent.planner import GroupingRules, plan_mails
from tests.unit.conftest import pending_decision


def _decision(seq: int | None = 1, severity: Severity = Severity.ERROR) -> Decision:
    return pending_decision(seq, uid="pump-1", code="E1", severity=severity, at=100.0)


def test_message_id_fixed_before_first_attempt(outbox: Outbox) -> None:
    """Planning gives each alert a mail whose Message-ID survives reopening the file."""
    outbox.ingest([_decision(1), _decision(2, severity=Severity.CRITICAL)])
    assert plan_mails(outbox, 200.0, "example.com", "gw-1") == 2
    assert plan_mails(outbox, 201.0, "example.com", "gw-1") == 0
    mails = outbox.claim_due(200.0, 10)
    assert [m.alerts[0].severity for m in mails] == [Severity.CRITICAL, Severity.ERROR]
    ids = {m.message_id for m in mails}
    assert all(i.startswith("<faultmail.gw-1.") and i.endswith("@example.com>") for i in ids)
    reopened = Outbox(outbox.path)
    assert {m.message_id for m in reopened.claim_due(200.0, 10)} == ids
    reopened.close()


def test_sent_retry_and_dead_are_recorded_with_audit(outbox: Outbox) -> None:
    """Each outcome updates mail and alerts in the same transaction as its audit row."""
    outbox.ingest([_decision(1), _decision(2), _decision(3)])
    plan_mails(outbox, 0.0, "example.com", "gw")
    a, b, c = outbox.claim_due(0.0, 10)
    outbox.mark_sent(a, 1.0, AuditEntry("send_attempt", "sent", a.id, [1], smtp_code=250))
    outbox.mark_retry(b, 1.0, 60.0, AuditEntry("send_attempt", "retry:smtp", b.id, [2]))
    outbox.mark_dead(c, 1.0, AuditEntry("send_attempt", "dead", c.id, [3], detail="550 no"))
    states = {r["id"]: r["state"] for r in outbox.alerts()}
    assert states == {1: "sent", 2: "pending", 3: "dead"}
    assert [m.id for m in outbox.claim_due(59.0, 10)] == []
    assert [m.id for m in outbox.claim_due(60.0, 10)] == [b.id]
    assert outbox.next_due() == 60.0
    audit = list(outbox.audit_log())
    assert [(r["outcome"], r["alert_ids"]) for r in audit] == [
        ("sent", [1]),
        ("retry:smtp", [2]),
        ("dead", [3]),
    ]
    assert {r["id"]: r["message_id"] is not None for r in outbox.alerts()} == {
        1: True,
        2: True,
        3: True,
    }
    assert {r["id"]: r["state"] for r in outbox.mails(tuple(MailState))} == {
        a.id: MailState.SENT,
        b.id: MailState.PENDING,
        c.id: MailState.DEAD,
    }


def test_next_due_includes_the_end_of_a_window_that_holds_a_repeat(outbox: Outbox) -> None:
    """A repeat held for its thread's window makes the window's end the next due time (the
    SQL finds the thread with the shared thread key); without a held repeat it does not."""
    rules = GroupingRules(repeat_window=600.0)
    outbox.ingest([_decision(1)])
    plan_mails(outbox, 100.0, "example.com", "gw", rules)
    (mail,) = outbox.claim_due(100.0, 10)
    outbox.mark_sent(mail, 101.0, AuditEntry("send_attempt", "sent", mail.id))
    assert outbox.next_due() is None
    outbox.ingest([_decision(2)])
    plan_mails(outbox, 110.0, "example.com", "gw", rules)
    assert outbox.claim_due(110.0, 10) == []
    assert outbox.next_due() == 700.0


def test_audit_and_last_reply_take_any_text(outbox: Outbox) -> None:
    """Text that cannot be encoded (a lone surrogate from a relay reply) is stored valid in
    the audit row and the mail's last reply instead of failing the write."""
    outbox.ingest([_decision(1)])
    plan_mails(outbox, 0.0, "example.com", "gw")
    (mail,) = outbox.claim_due(0.0, 1)
    entry = AuditEntry(
        "send_attempt", "retry:smtp", mail.id, [1], relay="r\udcff", detail="451 sp\udce4ter"
    )
    outbox.mark_retry(mail, 1.0, 60.0, entry)
    (row,) = outbox.audit_log()
    assert (row["detail"], row["relay"]) == ("451 sp\ufffdter", "r\ufffd")
    (queued,) = outbox.mails(("pending",))
    assert queued["last_reply"] == "451 sp\ufffdter"
