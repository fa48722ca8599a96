"""outbox.ingest: a batch in one transaction: alerts, duplicates, rejections, blocks."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from agent.identity import message_id
from agent.models import (
    AlertState,
    BlockEvent,
    Decision,
    MailKind,
    RawMessage,
    Reason,
    Severity,
)
from agent.outbox import SCHEMA_VERSION, Outbox
from agent.outbox._schema import upgrade
from agent.planner import BlockNotice
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


def _retained(decision: Decision, retain: bool = True) -> Decision:
    return replace(decision, raw=replace(decision.raw, retain=retain))


def test_retained_replay_of_stored_content_is_a_duplicate(outbox: Outbox) -> None:
    """A retained message whose topic and payload are already stored (live or replayed
    before) is a duplicate, even without a seq; the alert keeps the retain flag it came with."""
    live = _decision(None, b'{"code": "E1"}')
    first = outbox.ingest([live])
    replays = outbox.ingest([_retained(live), _retained(live)])
    assert (first.stored, replays.stored, replays.duplicates) == (1, 0, 2)
    assert [r["retained"] for r in outbox.alerts()] == [0]


def test_retained_message_with_new_content_is_a_new_alert(outbox: Outbox) -> None:
    """A retained message is new when its payload or its topic is: stored, marked retained."""
    outbox.ingest([_decision(None, b"a")])
    other_topic = pending_decision(None, uid="pump-2", code="E1", payload=b"a", at=100.0)
    result = outbox.ingest([_retained(_decision(None, b"b")), _retained(other_topic)])
    assert (result.stored, result.duplicates) == (2, 0)
    assert [r["retained"] for r in outbox.alerts()] == [0, 1, 1]


def test_live_repeat_of_retained_content_is_a_new_alert(outbox: Outbox) -> None:
    """A device publishing the same bytes again (retain flag clear) is never a replay."""
    first = _retained(_decision(None, b"a"))
    assert outbox.ingest([first, _retained(first, False)]).stored == 2


def test_retained_replay_of_a_rejected_payload_is_a_duplicate(outbox: Outbox) -> None:
    """A retained bad payload is recorded once, not at every reconnect; an oversized one is
    recognised by its sample and its size."""
    raw = RawMessage(
        topic="devices/x/fault",
        payload=b"x" * 512,
        mid=1,
        qos=1,
        dup=False,
        received_at=5.0,
        retain=True,
        size=20_000,
    )
    bigger = replace(raw, size=30_000)
    decisions = [Decision.rejected(r, Reason.TOO_LARGE, "big", "x") for r in (raw, raw, bigger)]
    result = outbox.ingest(decisions)
    assert (result.stored, result.duplicates) == (2, 1)


def test_version_2_outbox_is_migrated_and_keeps_its_alerts(tmp_path: Path) -> None:
    """An outbox of schema 2 gets the retained column (0 for its alerts) at open; its rows,
    having no content key, are not taken for the content of a replay."""
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2):
        upgrade(conn, version)
    conn.execute(
        "INSERT INTO alerts (received_at, topic, uid, state) "
        "VALUES (1.0, 'devices/pump-1/fault', 'pump-1', 'sent')"
    )
    conn.close()
    box = Outbox(path)
    try:
        assert box._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert box.ingest([_retained(_decision(None, b"a"))]).stored == 1
        assert [(r["uid"], r["retained"]) for r in box.alerts()] == [("pump-1", 0), ("pump-1", 1)]
    finally:
        box.close()
