"""outbox.ingest: a batch in one transaction: alerts, duplicates, rejections, blocks."""

from __future__ import annotations

from agent.models import AlertState, BlockEvent, Decision, MailKind, RawMessage, Severity
from agent.outbox import Outbox
from agent.planner import BlockNotice, message_id
from tests.unit.conftest import pending_decision


def _decision(seq: int | None = 1, payload: bytes = b"p") -> Decision:
    return pending_decision(seq, uid="pump-1", code="E1", payload=payload, at=100.0)


def test_retransmission_is_stored_once(outbox: Outbox) -> None:
    """Same uid, seq and bytes is a duplicate; a new seq or new bytes is a new alert."""
    first = outbox.ingest([_decision(1, b"a")])
    again = outbox.ingest([_decision(1, b"a"), _decision(2, b"a"), _decision(1, b"b")])
    assert (first.stored, again.stored, again.duplicates) == (1, 2, 1)


def test_messages_without_seq_are_never_merged(outbox: Outbox) -> None:
    """Without a seq there is no way to tell a repeat from a retransmission: keep both."""
    assert outbox.ingest([_decision(None), _decision(None)]).stored == 2


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


def test_a_block_is_stored_with_its_notices(outbox: Outbox) -> None:
    """A flood-guard block marks the device blocked, is audited, and its notice mails (with
    the planner's Message-IDs, due at once, critical) are stored in the same batch."""
    event = BlockEvent(
        uid="rogue",
        topic="devices/rogue/fault",
        started_at=10.0,
        blocked_at=12.0,
        rate_per_s=50.0,
        count=100,
        samples=("x",),
        reason="over 20/s",
    )
    notice = BlockNotice(event, ("sec@example.com",), ("ops@example.com",), "gw", "example.com")
    outbox.ingest([_decision(1)], blocks=[notice])
    assert outbox.blocked_uids() == {"rogue"}
    assert [r["outcome"] for r in outbox.audit_log()] == ["blocked"]
    mails = outbox.claim_due(12.0, 10)
    assert [(m.kind, m.recipients, m.severity_rank) for m in mails] == [
        (MailKind.SECURITY_NOTICE, ("sec@example.com",), Severity.CRITICAL.rank),
        (MailKind.BLOCK_NOTICE, ("ops@example.com",), Severity.CRITICAL.rank),
    ]
    assert [m.message_id for m in mails] == [
        message_id("gw", outbox.instance, m.id, "example.com") for m in mails
    ]
    assert mails[0].notice is not None and mails[0].notice["uid"] == "rogue"
