"""outbox.queue: claiming due mails and recording outcomes, each with its audit row."""

from __future__ import annotations

import json
import random

from agent.models import Decision, MailKind, Severity
from agent.outbox import AuditEntry, MailState, Outbox, thread_key
from agent.outbox.audit import valid_entry
from agent.outbox.plans import NewMail, insert_mails
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


def test_an_audit_entry_is_copied_only_when_a_text_needs_mending() -> None:
    """valid_entry hands back the usual all-ASCII entry itself, and mends every text field of
    one that is not: the event, the outcome, the relay and the detail."""
    plain = AuditEntry("send_attempt", "sent", 1, [1], relay="relay:587", detail="250 OK")
    assert valid_entry(plain) is plain
    bad = AuditEntry("e\udc80", "o\ud800", 1, [1], relay="r\udcff", detail="d\udce4")
    assert valid_entry(bad) == AuditEntry(
        "e\ufffd", "o\ufffd", 1, [1], relay="r\ufffd", detail="d\ufffd"
    )
    german = AuditEntry("send_attempt", "sent", 1, [1], detail="250 übernommen")
    assert valid_entry(german) == german


def _reference_claim(box: Outbox, now: float, limit: int) -> list[int]:
    """The documented claim order, computed in Python from the raw rows: due pending mails,
    numbered per device (first alert's UID, else the notice's, else none) by severity, age
    and id; critical mails first, then turn by turn."""
    conn = box._conn
    due = conn.execute(
        "SELECT id, severity_rank, created_at, notice FROM mails "
        "WHERE state = 'pending' AND next_attempt_at <= ?",
        (now,),
    ).fetchall()
    first_uid = dict(
        conn.execute(
            "SELECT mail_id, uid FROM alerts a WHERE mail_id IS NOT NULL AND id = "
            "(SELECT MIN(id) FROM alerts b WHERE b.mail_id = a.mail_id)"
        ).fetchall()
    )
    by_device: dict[str, list[tuple[int, float, int]]] = {}
    for m in due:
        notice = json.loads(m["notice"]) if m["notice"] else {}
        device = first_uid.get(m["id"]) or notice.get("uid") or ""
        by_device.setdefault(device, []).append((m["severity_rank"], m["created_at"], m["id"]))
    keyed = [
        (rank > Severity.CRITICAL.rank, turn, rank, created, mail_id)
        for mails in by_device.values()
        for turn, (rank, created, mail_id) in enumerate(sorted(mails), start=1)
    ]
    return [k[-1] for k in sorted(keyed)][:limit]


def test_claim_order_matches_the_documented_rule_in_a_mixed_backlog(outbox: Outbox) -> None:
    """Critical first, then round-robin across devices, whatever the mix: digests across
    devices (their first alert's device), notices (the device they name, or none), ties in
    age, mails not yet due and mails already sent; every claimed mail comes back whole."""
    rng = random.Random(18)
    uids = [f"pump-{i}" for i in range(7)]
    uid_of = {seq: rng.choice(uids) for seq in range(1, 241)}
    outbox.ingest(
        [pending_decision(seq, uid=uid_of[seq], code=f"E{seq % 3}", at=100.0) for seq in uid_of]
    )
    alert_ids = list(range(1, 241))
    rng.shuffle(alert_ids)
    mails: list[NewMail] = []
    while alert_ids or len(mails) < 150:
        mail_id = len(mails) + 1
        kind = rng.choice([MailKind.ALERT, MailKind.ALERT, MailKind.DIGEST, MailKind.BLOCK_NOTICE])
        carried: tuple[int, ...] = ()
        notice = None
        if kind is MailKind.BLOCK_NOTICE:
            notice = {"uid": rng.choice([*uids, "rogue-1"])} if rng.random() < 0.8 else {}
        elif alert_ids:
            carried = tuple(alert_ids.pop() for _ in range(min(len(alert_ids), rng.randint(1, 4))))
        threaded = kind is MailKind.ALERT and bool(carried) and mail_id % 5 == 0
        mails.append(
            NewMail(
                id=mail_id,
                message_id=f"<m{mail_id}@example.com>",
                kind=kind,
                recipients=(f"ops{mail_id % 3}@example.com",),
                severity_rank=rng.randint(0, 3),
                created_at=float(rng.randint(0, 20)),
                alert_ids=carried,
                # A mail in a thread carries that device's alerts (the claim reads its
                # device from the key).
                thread_key=thread_key(uid_of[min(carried)], "E0") if threaded else None,
                in_reply_to="<root@example.com>" if threaded else None,
                notice=notice,
            )
        )
    with outbox._transaction() as conn:
        insert_mails(conn, mails)
        conn.executemany(
            "INSERT INTO threads VALUES (?, 7.0, 1, NULL, 1, '<root@example.com>')",
            [(key,) for key in {m.thread_key for m in mails if m.thread_key}],
        )
        conn.execute("UPDATE mails SET next_attempt_at = 500.0 WHERE id % 11 = 0")
        conn.execute("UPDATE mails SET state = 'sent' WHERE id % 13 = 0")
    for limit in (1, 7, 50, 1000):
        claimed = outbox.claim_due(100.0, limit)
        assert [m.id for m in claimed] == _reference_claim(outbox, 100.0, limit), limit
    by_id = {m.id: m for m in mails}
    for got in outbox.claim_due(100.0, 1000):
        want = by_id[got.id]
        assert (got.message_id, got.kind, got.recipients) == (
            want.message_id,
            want.kind,
            want.recipients,
        )
        assert sorted(a.id for a in got.alerts) == sorted(want.alert_ids)
        assert (got.severity_rank, got.created_at, got.notice) == (
            want.severity_rank,
            want.created_at,
            want.notice,
        )
        assert (got.thread_root, got.opened_at) == (
            (want.in_reply_to, 7.0) if want.thread_key else (None, None)
        )
