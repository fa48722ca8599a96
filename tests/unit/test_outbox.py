"""outbox: durable storage, duplicates, fixed Message-IDs, state changes with audit rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.errors import OutboxCorrupt, OutboxError
from agent.models import AlertState, Decision, DeviceDelta, RawMessage, Severity
from agent.outbox import SCHEMA_VERSION, AuditEntry, Outbox
from tests.unit.conftest import pending_decision


def _decision(
    seq: int | None = 1,
    payload: bytes = b"p",
    uid: str = "pump-1",
    severity: Severity = Severity.ERROR,
) -> Decision:
    return pending_decision(seq, uid=uid, code="E1", severity=severity, payload=payload, at=100.0)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db")
    yield box  # type: ignore[misc]
    box.close()


def test_schema_is_versioned_and_durable(outbox: Outbox) -> None:
    """A new outbox is at the current schema version, in WAL mode with synchronous=FULL."""
    conn = outbox._conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_retransmission_is_stored_once(outbox: Outbox) -> None:
    """Same uid, seq and bytes is a duplicate; a new seq or new bytes is a new alert."""
    first = outbox.ingest([_decision(1, b"a")])
    again = outbox.ingest([_decision(1, b"a"), _decision(2, b"a"), _decision(1, b"b")])
    assert (first.stored, again.stored, again.duplicates) == (1, 2, 1)


def test_messages_without_seq_are_never_merged(outbox: Outbox) -> None:
    """Without a seq there is no way to tell a repeat from a retransmission: keep both."""
    assert outbox.ingest([_decision(None), _decision(None)]).stored == 2


def test_message_id_fixed_before_first_attempt(outbox: Outbox) -> None:
    """plan_mails gives each alert a mail whose Message-ID survives reopening the file."""
    outbox.ingest([_decision(1), _decision(2, severity=Severity.CRITICAL)])
    assert outbox.plan_mails(200.0, "example.com", "gw-1") == 2
    assert outbox.plan_mails(201.0, "example.com", "gw-1") == 0
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
    outbox.plan_mails(0.0, "example.com", "gw")
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


def test_rejections_are_stored_with_sample_and_audit(outbox: Outbox) -> None:
    """A rejected payload is an alert row with its reason, a bounded sample and an audit row."""
    raw = RawMessage(
        topic="devices/x/fault", payload=b"\xff" * 4000, mid=1, qos=1, dup=False, received_at=5.0
    )
    outbox.ingest(
        [Decision(raw=raw, fault=None, state=AlertState.REJECTED, reason="not_utf8: bad", uid="x")]
    )
    row = next(outbox.alerts())
    assert (row["state"], row["reason"], row["uid"]) == ("rejected", "not_utf8: bad", "x")
    sample = outbox._conn.execute("SELECT payload_sample FROM alerts").fetchone()[0]
    assert len(sample) == 512
    assert [r["outcome"] for r in outbox.audit_log()] == ["rejected"]
    assert outbox.plan_mails(6.0, "example.com", "gw") == 0


def test_readonly_reader_sees_committed_rows(outbox: Outbox) -> None:
    """The CLI's read-only connection reads while the daemon's writer holds the file."""
    outbox.ingest([_decision(1)])
    reader = Outbox(outbox.path, readonly=True)
    assert [r["seq"] for r in reader.alerts()] == [1]
    with pytest.raises(OutboxError):
        reader.ingest([_decision(2)])
    reader.close()


def test_corrupt_file_is_refused_with_instructions(tmp_path: Path) -> None:
    """A file that is not a database stops startup with a message saying what to do."""
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxCorrupt, match="move the file aside"):
        Outbox(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer faultmail is not touched."""
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(path)


def test_disk_full_is_unavailable_not_corrupt(tmp_path: Path) -> None:
    """SQLITE_FULL surfaces as OutboxUnavailable and the file stays consistent."""
    from agent.errors import OutboxUnavailable

    box = Outbox(tmp_path / "outbox.db")
    box.ingest([_decision(0)])
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [_decision(i, payload=json.dumps(["x" * 2000, i]).encode()) for i in range(1, 200)]
    with pytest.raises(OutboxUnavailable, match="full"):
        box.ingest(big)
    assert [r["seq"] for r in box.alerts()] == [0]
    box.close()


def test_suppressed_count_reaches_the_next_mail_of_that_device_once(outbox: Outbox) -> None:
    """Alerts the rate limit suppressed are reported by the device's next mail (only the first
    of that pass) and then reset; other devices' mails report nothing."""
    outbox.ingest([], [DeviceDelta("p", "devices/p/fault", 1.0, received=4, suppressed=4)])
    outbox.ingest(
        [
            pending_decision(1, uid="p", code="E1"),
            pending_decision(2, uid="p", code="E2"),
            pending_decision(3, uid="q", code="E1"),
        ]
    )
    outbox.plan_mails(10.0, "example.com", "gw")
    mails = outbox.claim_due(10.0, 10)
    reported = {(m.alerts[0].uid, m.alerts[0].code): m.suppressed_before for m in mails}
    assert reported == {("p", "E1"): 4, ("p", "E2"): 0, ("q", "E1"): 0}
    outbox.ingest([pending_decision(4, uid="p", code="E3")])
    outbox.plan_mails(20.0, "example.com", "gw")
    later = [m for m in outbox.claim_due(20.0, 10) if m.alerts[0].code == "E3"]
    assert [m.suppressed_before for m in later] == [0]


def test_audit_and_last_reply_take_any_text(outbox: Outbox) -> None:
    """Text that cannot be encoded (a lone surrogate from a relay reply) is stored valid in
    the audit row and the mail's last reply instead of failing the write."""
    outbox.ingest([_decision(1)])
    outbox.plan_mails(0.0, "example.com", "gw")
    (mail,) = outbox.claim_due(0.0, 1)
    entry = AuditEntry(
        "send_attempt", "retry:smtp", mail.id, [1], relay="r\udcff", detail="451 sp\udce4ter"
    )
    outbox.mark_retry(mail, 1.0, 60.0, entry)
    (row,) = outbox.audit_log()
    assert (row["detail"], row["relay"]) == ("451 sp\ufffdter", "r\ufffd")
    (queued,) = outbox.mails(("pending",))
    assert queued["last_reply"] == "451 sp\ufffdter"
