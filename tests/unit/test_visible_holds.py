"""Visible holds (issue 16): every pending alert and mail says why it waits and until when,
derived from what the outbox stores and the gate row the delivery loop records."""

from __future__ import annotations

import math

from agent.models import AlertState, DeviceDelta, FaultState
from agent.outbox import AuditEntry, Outbox
from agent.outbox import holds as h
from agent.planner import GroupingRules, plan_mails
from tests.unit.conftest import pending_decision

T0 = 1_800_000_000.0
WINDOW = 600.0
RULES = GroupingRules(repeat_window=WINDOW, digest_threshold=1000)


def _alert(outbox: Outbox, seq: int, at: float, *, uid: str = "p", code: str = "E") -> None:
    outbox.ingest(
        [pending_decision(seq, uid=uid, code=code, at=at)],
        [DeviceDelta(uid, f"devices/{uid}/fault", at, received=1)],
    )


def _send_all(outbox: Outbox, now: float, rules: GroupingRules = RULES) -> None:
    plan_mails(outbox, now, "example.com", "gw", rules)
    for mail in outbox.claim_due(now, 100):
        outbox.mark_sent(mail, now, AuditEntry("send_attempt", "sent", mail.id))


def _pending(outbox: Outbox, now: float) -> list[dict[str, object]]:
    return list(outbox.alerts(state=AlertState.PENDING, holds=True, now=now))


def test_repeats_in_a_window_say_repeat_window_until_its_end(outbox: Outbox) -> None:
    """Repeats held by a repeat window: reason, due_at the window's end, one queue row."""
    _alert(outbox, 1, T0)
    _send_all(outbox, T0)
    for seq in range(2, 5):
        _alert(outbox, seq, T0 + seq)
    _send_all(outbox, T0 + 5)
    rows = _pending(outbox, T0 + 6)
    assert [(r["id"], r["reason"], r["due_at"]) for r in rows] == [
        (n, h.REPEAT_WINDOW, T0 + WINDOW) for n in (2, 3, 4)
    ]
    (held,) = outbox.held(T0 + 6)
    assert held["state"] == "held" and held["alert_ids"] == [2, 3, 4]
    assert (held["reason"], held["due_at"], held["uid"]) == (h.REPEAT_WINDOW, T0 + WINDOW, "p")
    assert outbox.pending_reasons(T0 + 6) == {h.REPEAT_WINDOW: 3}
    sent = next(outbox.alerts(state=AlertState.SENT, holds=True, now=T0 + 6))
    assert sent["due_at"] is None


def test_unplanned_alert_with_nothing_holding_it_waits_for_the_next_pass(outbox: Outbox) -> None:
    """A new alert not planned yet: reason next delivery pass, no due time."""
    _alert(outbox, 1, T0)
    (row,) = _pending(outbox, T0 + 1)
    assert (row["reason"], row["due_at"]) == (h.NEXT_PASS, None)


def test_relay_pause_holds_mails_and_planning_until_it_ends(outbox: Outbox) -> None:
    """A retried mail after a connect failure and a paused gate: relay unreachable until the
    pause ends; a new alert waits for the pause too, as does the queue's mail row."""
    _alert(outbox, 1, T0)
    plan_mails(outbox, T0, "example.com", "gw", RULES)
    (mail,) = outbox.claim_due(T0, 10)
    entry = AuditEntry("send_attempt", "retry:connect", mail.id, detail="connect: refused")
    outbox.mark_retry(mail, T0, T0 + 5, entry)
    outbox.record_gate(T0, 29.5, None, True, RULES)
    _alert(outbox, 2, T0 + 1, code="F")
    rows = _pending(outbox, T0 + 2)
    assert [(r["reason"], r["due_at"]) for r in rows] == [(h.RELAY_UNREACHABLE, T0 + 30)] * 2
    (queued,) = outbox.mails(now=T0 + 2)
    assert (queued["reason"], queued["due_at"]) == (h.RELAY_UNREACHABLE, T0 + 30)
    # After the pause: the retry's own due time and reason.
    rows = _pending(outbox, T0 + 31)
    assert (rows[0]["reason"], rows[0]["due_at"]) == (h.RELAY_UNREACHABLE, T0 + 5)
    assert (rows[1]["reason"], rows[1]["due_at"]) == (h.NEXT_PASS, None)


def test_login_refusal_pause_names_the_login(outbox: Outbox) -> None:
    """A pause after an auth failure (no probe) is recorded as the relay refusing our login."""
    _alert(outbox, 1, T0)
    plan_mails(outbox, T0, "example.com", "gw", RULES)
    (mail,) = outbox.claim_due(T0, 10)
    outbox.mark_retry(mail, T0, T0 + 5, AuditEntry("send_attempt", "retry:auth", mail.id))
    outbox.record_gate(T0, 60.0, None, False, RULES)
    (row,) = _pending(outbox, T0 + 1)
    assert (row["reason"], row["due_at"]) == (h.RELAY_LOGIN, T0 + 60)


def test_4xx_retry_says_retry_after_4xx_until_the_next_attempt(outbox: Outbox) -> None:
    """A 451 to DATA: retry after 4xx, due at the retry time."""
    _alert(outbox, 1, T0)
    plan_mails(outbox, T0, "example.com", "gw", RULES)
    (mail,) = outbox.claim_due(T0, 10)
    entry = AuditEntry("send_attempt", "retry:smtp", mail.id, smtp_code=451, detail="451 later")
    outbox.mark_retry(mail, T0, T0 + 7.5, entry)
    (row,) = _pending(outbox, T0 + 1)
    assert (row["reason"], row["due_at"]) == (h.RETRY_4XX, T0 + 7.5)


def test_due_mails_over_the_cap_wait_for_a_free_slot(outbox: Outbox) -> None:
    """Due mails while the per-minute cap is reached: the cap, until the next slot frees;
    a planned mail with nothing holding it is queued for delivery."""
    _alert(outbox, 1, T0)
    plan_mails(outbox, T0, "example.com", "gw", RULES)
    (row,) = _pending(outbox, T0)
    assert (row["reason"], row["due_at"]) == (h.QUEUED, T0)
    outbox.record_gate(T0, -1e9, 12.2, False, RULES)
    (row,) = _pending(outbox, T0 + 1)
    assert (row["reason"], row["due_at"]) == (h.CAP, math.ceil(T0 + 12.2))
    assert outbox.pending_reasons(T0 + 1) == {h.CAP: 1}


def test_device_over_its_budget_waits_for_the_window(outbox: Outbox) -> None:
    """A device that spent its budget: a new code waits until its last mail leaves the window."""
    rules = GroupingRules(WINDOW, 1000, device_budget=1, device_window=60.0)
    _alert(outbox, 1, T0)
    _send_all(outbox, T0, rules)
    outbox.record_gate(T0, -1e9, None, False, rules)
    _alert(outbox, 2, T0 + 10, code="F")
    _send_all(outbox, T0 + 10, rules)
    (row,) = _pending(outbox, T0 + 11)
    assert (row["reason"], row["due_at"]) == (h.DEVICE_BUDGET, T0 + 60)


def test_record_gate_writes_only_a_change(outbox: Outbox) -> None:
    """An idle loop recording the same gate again writes nothing."""
    outbox.record_gate(T0, 10.0, None, True, RULES)
    before = outbox._conn.total_changes
    outbox.record_gate(T0 + 0.2, 9.8, None, True, RULES)
    assert outbox._conn.total_changes == before
    outbox.record_gate(T0 + 11, -1.0, None, True, RULES)
    assert outbox._conn.total_changes > before


def test_repeats_of_an_acknowledged_thread_say_acknowledged_without_a_time(
    outbox: Outbox,
) -> None:
    """Repeats held by an acknowledgement go out with the resolve or an escalation: reason
    acknowledged, no due time, past the repeat window and through a relay pause alike; the
    resolve itself is not held by the ack."""
    _alert(outbox, 1, T0)
    _send_all(outbox, T0)
    assert outbox.acknowledge("p", "E", "eva", "on my way", T0 + 1).error == ""
    for seq in (2, 3):
        _alert(outbox, seq, T0 + seq)
    rows = _pending(outbox, T0 + 4)  # not planned yet: the ack already says why
    assert [(r["id"], r["reason"], r["due_at"]) for r in rows] == [
        (2, h.ACKNOWLEDGED, None),
        (3, h.ACKNOWLEDGED, None),
    ]
    _send_all(outbox, T0 + 5)
    outbox.record_gate(T0 + 5, 60.0, None, False, RULES)
    later = T0 + WINDOW + 10
    rows = _pending(outbox, later)
    assert [(r["id"], r["reason"], r["due_at"]) for r in rows] == [
        (2, h.ACKNOWLEDGED, None),
        (3, h.ACKNOWLEDGED, None),
    ]
    (held,) = outbox.held(later)
    assert (held["reason"], held["due_at"], held["alert_ids"]) == (h.ACKNOWLEDGED, None, [2, 3])
    assert outbox.pending_reasons(later) == {h.ACKNOWLEDGED: 2}
    outbox.ingest(
        [pending_decision(4, uid="p", code="E", at=later, state=FaultState.RESOLVED)],
        [DeviceDelta("p", "devices/p/fault", later, received=1)],
    )
    resolve = next(r for r in _pending(outbox, later + 1) if r["id"] == 4)
    assert resolve["reason"] == h.NEXT_PASS


def test_daily_recipient_budget_holds_mails_and_alerts_until_a_slot_frees(
    outbox: Outbox,
) -> None:
    """While the daily recipient budget holds delivery (the loop records budget_wait): a due
    mail's alerts and a new alert say daily recipient budget, due when the oldest send leaves
    the 24 h window; once that time has passed, their own reasons again."""
    _alert(outbox, 1, T0)
    plan_mails(outbox, T0, "example.com", "gw", RULES)
    _alert(outbox, 2, T0 + 1, code="F")
    outbox.record_gate(T0 + 1, -1e9, None, False, RULES, 3600.4)
    frees = math.ceil(T0 + 1 + 3600.4)
    rows = _pending(outbox, T0 + 2)
    assert [(r["id"], r["reason"], r["due_at"]) for r in rows] == [
        (1, h.RECIPIENT_BUDGET, frees),
        (2, h.RECIPIENT_BUDGET, frees),
    ]
    (queued,) = outbox.mails(now=T0 + 2)
    assert (queued["reason"], queued["due_at"]) == (h.RECIPIENT_BUDGET, frees)
    assert outbox.pending_reasons(T0 + 2) == {h.RECIPIENT_BUDGET: 2}
    rows = _pending(outbox, frees + 1)
    assert [(r["reason"], r["due_at"]) for r in rows] == [(h.QUEUED, T0), (h.NEXT_PASS, None)]
    # The budget no longer holds: the loop records the gate without it.
    outbox.record_gate(frees + 1, -1e9, None, False, RULES)
    (queued,) = outbox.mails(now=frees + 1)
    assert queued["reason"] == h.QUEUED
