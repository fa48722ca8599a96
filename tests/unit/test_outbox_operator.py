"""outbox.operator: a technician's re-queue, drop, block and unblock, each audited."""

from __future__ import annotations

from agent.outbox import AuditEntry, Outbox
from agent.planner import plan_mails
from tests.unit.conftest import pending_decision


def _dead_mail(outbox: Outbox) -> int:
    outbox.ingest([pending_decision(1)])
    plan_mails(outbox, 0.0, "example.com", "gw")
    (mail,) = outbox.claim_due(0.0, 1)
    outbox.mark_dead(mail, 1.0, AuditEntry("send_attempt", "dead", mail.id, detail="550 no"))
    return mail.id


def test_requeue_makes_a_dead_mail_and_its_alerts_pending_and_due(outbox: Outbox) -> None:
    """A re-queued dead mail is due now, its alerts pending again, with an audit row by actor."""
    mail_id = _dead_mail(outbox)
    assert outbox.dead_mail_ids() == [mail_id]
    assert outbox.requeue([mail_id, 999], 5.0, "alice") == [mail_id]
    assert [m.id for m in outbox.claim_due(5.0, 10)] == [mail_id]
    assert [r["state"] for r in outbox.alerts()] == ["pending"]
    last = list(outbox.audit_log())[-1]
    assert (last["outcome"], last["detail"], last["alert_ids"]) == ("requeued", "by alice", [1])


def test_drop_only_touches_pending_mails(outbox: Outbox) -> None:
    """Dropping a pending mail makes it and its alerts dead with the reason; a dead one is
    left alone."""
    outbox.ingest([pending_decision(1)])
    plan_mails(outbox, 0.0, "example.com", "gw")
    (mail,) = outbox.claim_due(0.0, 1)
    assert outbox.drop(mail.id, "test noise", 1.0, "bob")
    assert not outbox.drop(mail.id, "again", 2.0, "bob")
    (row,) = outbox.alerts()
    assert (row["state"], row["reason"]) == ("dead", "dropped by bob: test noise")


def test_block_and_unblock_by_hand_are_idempotent(outbox: Outbox) -> None:
    """Blocking a blocked device (or unblocking an unblocked one) changes and audits nothing."""
    assert outbox.set_blocked("pump-9", True, "noisy", 1.0, "carol")
    assert not outbox.set_blocked("pump-9", True, "noisy", 2.0, "carol")
    assert outbox.blocked_uids() == {"pump-9"}
    assert outbox.set_blocked("pump-9", False, "", 3.0, "carol")
    assert outbox.blocked_uids() == set()
    assert [r["outcome"] for r in outbox.audit_log()] == ["blocked", "unblocked"]
