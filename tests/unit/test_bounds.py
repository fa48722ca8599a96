"""The outbox's caps: what gives way first, and that a critical alert never does."""

from __future__ import annotations

import pytest

from agent.bounds import OutboxBounds
from agent.errors import OutboxFull
from agent.models import AlertState, Decision, Severity
from agent.outbox import Outbox
from agent.planner import plan_mails
from agent.settings import OutboxSettings
from tests.fakes import FakeClock
from tests.unit.conftest import pending_decision


def _decisions(severities: list[Severity], start: int = 0, at: float = 100.0) -> list[Decision]:
    return [pending_decision(i, severity=sev, at=at + i) for i, sev in enumerate(severities, start)]


def _caps(max_pending: int) -> OutboxSettings:
    return OutboxSettings.model_construct(max_pending=max_pending, max_bytes=10**9, keep_days=30.0)


def test_least_severe_oldest_give_way_first(outbox: Outbox) -> None:
    """Over max_pending, info goes before warning before error, oldest first, with a record."""
    sevs = [Severity.ERROR, Severity.INFO, Severity.WARNING, Severity.INFO, Severity.CRITICAL]
    outbox.ingest(_decisions(sevs))
    # A cap of 5 (below the validated minimum, hence model_construct) with 3 arriving.
    bounds = OutboxBounds(_caps(max_pending=5), clock=FakeClock())
    bounds.make_room(outbox, 3)
    states = {r["seq"]: (r["state"], r["severity"]) for r in outbox.alerts()}
    assert sorted(s for s, (st, _) in states.items() if st == "dead") == [1, 2, 3]
    assert states[0][0] == "pending" and states[4][0] == "pending"
    evicted = [r for r in outbox.audit_log() if r["outcome"] == "evicted"]
    assert len(evicted) == 1 and sorted(evicted[0]["alert_ids"]) == [2, 3, 4]
    assert all(r["reason"].startswith("evicted:") for r in outbox.alerts(state=AlertState.DEAD))


def test_critical_alerts_never_give_way(outbox: Outbox) -> None:
    """With only critical alerts pending at the cap, ingest must pause (OutboxFull)."""
    outbox.ingest(_decisions([Severity.CRITICAL] * 3))
    bounds = OutboxBounds(_caps(max_pending=3), clock=FakeClock())
    with pytest.raises(OutboxFull, match="critical"):
        bounds.make_room(outbox, 1)
    assert [r["state"] for r in outbox.alerts()] == ["pending"] * 3


def test_housekeeping_prunes_only_old_finished_history(outbox: Outbox) -> None:
    """Finished alerts older than keep_days go with their mails and audit; pending ones stay."""
    outbox.ingest(_decisions([Severity.ERROR] * 3, at=0.0))
    plan_mails(outbox, 10.0, "example.com", "gw")
    first, *_ = outbox.claim_due(10.0, 10)
    from agent.outbox import AuditEntry

    outbox.mark_sent(first, 10.0, AuditEntry("send_attempt", "sent", first.id, [1]))
    clock = FakeClock(start=40 * 86400.0)
    bounds = OutboxBounds(OutboxSettings(keep_days=30), clock=clock)
    assert bounds.housekeeping(outbox) == 1
    assert [r["state"] for r in outbox.alerts()] == ["pending", "pending"]
    assert list(outbox.audit_log()) == []
    assert [m["state"] for m in outbox.mails(("sent", "pending"))] == ["pending", "pending"]


def test_space_shrink_gives_up_when_no_history_can_go(outbox: Outbox) -> None:
    """Over max_bytes with finished history dated after now (a clock stepped back), shrinking
    stops and ingest pauses with OutboxFull instead of looping forever."""
    outbox.ingest(_decisions([Severity.ERROR] * 3, at=5_000.0))
    plan_mails(outbox, 5_010.0, "example.com", "gw")
    first, *_ = outbox.claim_due(5_010.0, 10)
    from agent.outbox import AuditEntry

    outbox.mark_sent(first, 5_010.0, AuditEntry("send_attempt", "sent", first.id, [1]))
    caps = OutboxSettings.model_construct(max_pending=1000, max_bytes=1, keep_days=30.0)
    bounds = OutboxBounds(caps, clock=FakeClock(start=100.0))
    with pytest.raises(OutboxFull):
        bounds.make_room(outbox, 1)
    assert [r["state"] for r in outbox.alerts()] == ["sent", "pending", "pending"]


def test_space_shrink_keeps_the_audit_of_pending_mails(outbox: Outbox) -> None:
    """Pruning finished history for space removes its audit rows, not those of mails still
    waiting to be delivered."""
    outbox.ingest(_decisions([Severity.ERROR] * 2, at=0.0))
    plan_mails(outbox, 10.0, "example.com", "gw")
    sent, waiting = outbox.claim_due(10.0, 10)
    from agent.outbox import AuditEntry

    outbox.mark_sent(sent, 10.0, AuditEntry("send_attempt", "sent", sent.id, [1]))
    outbox.mark_retry(
        waiting, 10.0, 20.0, AuditEntry("send_attempt", "retry:connect", waiting.id, [2])
    )
    caps = OutboxSettings.model_construct(max_pending=1000, max_bytes=1, keep_days=30.0)
    bounds = OutboxBounds(caps, clock=FakeClock(start=100.0))
    with pytest.raises(OutboxFull):
        bounds.make_room(outbox, 1)
    assert [r["state"] for r in outbox.alerts()] == ["pending"]
    assert [(r["mail_id"], r["outcome"]) for r in outbox.audit_log()] == [
        (waiting.id, "retry:connect")
    ]


def test_partial_recipients_keep_retrying_the_temporary_ones(outbox: Outbox) -> None:
    """4xx for one recipient: alerts are sent, the mail stays queued for that recipient only."""
    from agent.models import Mail
    from agent.outbox import AuditEntry

    outbox.ingest(_decisions([Severity.ERROR]))
    plan_mails(outbox, 0.0, "example.com", "gw")
    (mail,) = outbox.claim_due(0.0, 1)
    two = Mail(
        id=mail.id,
        message_id=mail.message_id,
        created_at=0.0,
        recipients=("a@example.com", "b@example.com"),
        attempts=0,
        alerts=mail.alerts,
    )
    outbox.mark_sent(
        two,
        1.0,
        AuditEntry("send_attempt", "sent", two.id, [1]),
        accepted=["a@example.com"],
        retry_recipients=["b@example.com"],
        retry_at=9.0,
    )
    (row,) = outbox.mails(("pending",))
    assert row["recipients"] == ["b@example.com"] and row["delivered_to"] == ["a@example.com"]
    assert next(outbox.alerts())["state"] == "sent"
    (again,) = outbox.claim_due(9.0, 1)
    assert again.recipients == ("b@example.com",) and again.message_id == mail.message_id


def test_operator_requeue_and_drop_are_audited(outbox: Outbox) -> None:
    """queue retry brings a dead mail back due now; queue drop gives up; both name the actor."""
    from agent.outbox import AuditEntry

    outbox.ingest(_decisions([Severity.ERROR, Severity.ERROR]))
    plan_mails(outbox, 0.0, "example.com", "gw")
    a, b = outbox.claim_due(0.0, 2)
    outbox.mark_dead(a, 1.0, AuditEntry("send_attempt", "dead", a.id, [1], detail="554 no"))
    assert outbox.requeue([a.id], 5.0, "tech") == [a.id]
    assert [m.id for m in outbox.claim_due(5.0, 5)] == [a.id, b.id]
    assert outbox.drop(b.id, "device decommissioned", 6.0, "tech")
    assert not outbox.drop(b.id, "again", 7.0, "tech")
    rows = {r["id"]: r for r in outbox.alerts()}
    assert rows[1]["state"] == "pending" and rows[2]["state"] == "dead"
    assert "dropped by tech: device decommissioned" in rows[2]["reason"]
    ops = [(r["outcome"], r["detail"]) for r in outbox.audit_log() if r["event"] == "operator"]
    assert ops == [("requeued", "by tech"), ("dropped", "dropped by tech: device decommissioned")]


def test_requeue_all_dead_in_chunks_with_progress(
    outbox: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """queue retry --all-dead re-queues hundreds of dead mails, showing progress."""
    from agent.cli.actions import requeue_all as _requeue_all
    from agent.outbox import AuditEntry

    outbox.ingest(_decisions([Severity.ERROR] * 250))
    plan_mails(outbox, 0.0, "example.com", "gw")
    for mail in outbox.claim_due(0.0, 1000):
        outbox.mark_dead(mail, 1.0, AuditEntry("send_attempt", "dead", mail.id, detail="554"))
    assert _requeue_all(outbox, 5.0, chunk=100) == 0
    out = capsys.readouterr()
    assert "re-queued 250 dead mail(s)" in out.out and "re-queued 200/250" in out.err
    assert len(outbox.claim_due(5.0, 1000)) == 250


@pytest.mark.parametrize("how", ["keep_days", "space"])
def test_pruning_keeps_the_alerts_of_a_mail_pending_for_some_recipients(
    outbox: Outbox, how: str
) -> None:
    """A mail sent to one recipient and still retrying another (4xx) keeps its alerts when
    history is pruned, by age or for space: its retry is composed from them."""
    from agent.models import Mail
    from agent.outbox import AuditEntry

    outbox.ingest(_decisions([Severity.ERROR, Severity.ERROR], at=0.0))
    plan_mails(outbox, 0.0, "example.com", "gw")
    partial, done = outbox.claim_due(0.0, 2)
    two = Mail(
        id=partial.id,
        message_id=partial.message_id,
        created_at=0.0,
        recipients=("a@example.com", "b@example.com"),
        attempts=0,
        alerts=partial.alerts,
    )
    sent = AuditEntry("send_attempt", "sent", two.id, [1])
    outbox.mark_sent(two, 1.0, sent, accepted=["a@example.com"], retry_recipients=["b@example.com"])
    outbox.mark_sent(done, 1.0, AuditEntry("send_attempt", "sent", done.id, [2]))
    clock = FakeClock(start=40 * 86400.0)  # past keep_days = 30
    if how == "keep_days":
        OutboxBounds(_caps(1000), clock=clock).housekeeping(outbox)
    else:
        caps = OutboxSettings.model_construct(max_pending=1000, max_bytes=1, keep_days=30.0)
        with pytest.raises(OutboxFull):
            OutboxBounds(caps, clock=clock).make_room(outbox, 1)
    assert [(r["id"], r["state"]) for r in outbox.alerts()] == [(1, "sent")]
    (again,) = outbox.claim_due(clock(), 5)
    assert again.id == partial.id and [a.id for a in again.alerts] == [1]
