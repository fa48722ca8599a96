"""The outbox in group mode (schema 5): alert identities, Message-IDs that every member gives
the same alert, the held-record mirror, and the migration of a version 4 file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity import alert_identity, group_message_id, notice_identity
from agent.models import AlertState, BlockEvent, Decision, MailKind, RawMessage, Reason
from agent.outbox import SCHEMA_VERSION, MirrorState, Outbox
from agent.outbox._schema import upgrade
from agent.outbox.audit import AuditEntry
from agent.planner import BlockNotice, GroupingRules, plan_mails
from tests.unit.conftest import pending_decision

DOMAIN = "example.com"
ONE_BY_ONE = GroupingRules()
GROUPED = GroupingRules(repeat_window=60.0)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Outbox, Outbox]]:
    """Two members' outboxes in group "g" (two files, two random database instances)."""
    a = Outbox(tmp_path / "a.db", group="g")
    b = Outbox(tmp_path / "b.db", group="g")
    yield a, b
    a.close()
    b.close()


def _message_ids(box: Outbox) -> list[str]:
    return [str(r[0]) for r in box._conn.execute("SELECT message_id FROM mails ORDER BY id")]


def _column(box: Outbox, column: str) -> list[object]:
    return [r[0] for r in box._conn.execute(f"SELECT {column} FROM alerts ORDER BY id")]


def _send_all(box: Outbox, now: float) -> None:
    for mail in box.claim_due(now, 100):
        box.mark_sent(mail, now, AuditEntry("send_attempt", "sent", mail.id))


def test_two_members_give_the_same_alert_the_same_message_id(
    pair: tuple[Outbox, Outbox],
) -> None:
    """The same device message stored and planned on two members (different database files,
    gateway ids, mail ids and times) gets one Message-ID, made of the alert's identity."""
    a, b = pair
    a.ingest([pending_decision(1, uid="p", code="E1", payload=b"x")])
    b.ingest([pending_decision(9, uid="q", code="E9")])  # b's mail ids are ahead of a's
    plan_mails(b, 5.0, DOMAIN, "gw-b")
    b.ingest([pending_decision(1, uid="p", code="E1", payload=b"x", at=7.0)])
    plan_mails(a, 10.0, DOMAIN, "gw-a")
    plan_mails(b, 30.0, DOMAIN, "gw-b")
    identity = alert_identity("g", "p", "E1", 1, b"x")
    expected = group_message_id("g", MailKind.ALERT.value, identity, DOMAIN)
    assert _message_ids(a) == [expected]
    assert _message_ids(b)[1] == expected


def test_thread_roots_and_follow_ups_agree_across_members(pair: tuple[Outbox, Outbox]) -> None:
    """A thread's root is its first mail's group Message-ID on both members, and the follow-up
    of the same repeats is named after its first repeat alike."""
    a, b = pair
    for box in pair:
        box.ingest([pending_decision(1)])
        plan_mails(box, 10.0, DOMAIN, "gw")
        box.ingest([pending_decision(2), pending_decision(3)])
        plan_mails(box, 20.0, DOMAIN, "gw", GROUPED)
        plan_mails(box, 100.0, DOMAIN, "gw", GROUPED)
    assert _message_ids(a) == _message_ids(b)
    rows = a._conn.execute("SELECT kind, message_id, in_reply_to FROM mails ORDER BY id")
    (first_kind, root, none), (follow_kind, follow_id, answers) = [tuple(r) for r in rows]
    assert (first_kind, none, follow_kind, answers) == ("alert", None, "followup", root)
    assert follow_id == group_message_id(
        "g", "followup", alert_identity("g", "p", "E", 2, b"2"), DOMAIN
    )


def test_different_alerts_never_share_a_message_id(pair: tuple[Outbox, Outbox]) -> None:
    """Alerts differing in device, code, seq or (without seq) payload each get their own
    Message-ID, on one member and across both."""
    a, b = pair
    a.ingest(
        [
            pending_decision(1, uid="p", code="E1"),
            pending_decision(2, uid="p", code="E1"),
            # Another code with the same seq (a dedupe key of uid, seq and payload).
            pending_decision(1, uid="p", code="E2", payload=b"1 E2"),
        ]
    )
    b.ingest(
        [
            pending_decision(1, uid="q", code="E1"),
            pending_decision(None, uid="p", code="E1", payload=b'{"t":1}'),
            pending_decision(None, uid="p", code="E1", payload=b'{"t":2}'),
        ]
    )
    plan_mails(a, 10.0, DOMAIN, "gw")
    plan_mails(b, 10.0, DOMAIN, "gw")
    every = _message_ids(a) + _message_ids(b)
    assert len(every) == len(set(every)) == 6
    assert all(mid.startswith("<faultmail.g.alert.") for mid in every)


def test_a_repeated_payload_without_seq_still_plans(tmp_path: Path) -> None:
    """A device that repeats the same bytes without a seq gives its alerts one identity: the
    repeats still become mails (single-mode Message-IDs for those whose group one is taken)
    instead of a planning pass that fails on the unique Message-ID, now or in a later pass."""
    box = Outbox(tmp_path / "o.db", group="g")
    try:
        same = [pending_decision(None, payload=b'{"code":"E"}', at=float(n)) for n in (1, 2)]
        box.ingest(same)
        assert plan_mails(box, 10.0, DOMAIN, "gw") == 2
        box.ingest([pending_decision(None, payload=b'{"code":"E"}', at=11.0)])
        assert plan_mails(box, 20.0, DOMAIN, "gw") == 1
        ids = _message_ids(box)
        grouped = group_message_id(
            "g", "alert", alert_identity("g", "p", "E", None, b'{"code":"E"}'), DOMAIN
        )
        assert ids[0] == grouped
        assert ids[1:] == [f"<faultmail.gw.{box.instance}.{n}@{DOMAIN}>" for n in (2, 3)]
        (in_reply_to,) = {
            r[0] for r in box._conn.execute("SELECT in_reply_to FROM mails WHERE id > 1")
        }
        assert in_reply_to == grouped
    finally:
        box.close()


def test_group_block_notices_are_named_after_the_block(pair: tuple[Outbox, Outbox]) -> None:
    """A block's notices get the same Message-IDs on two members that saw the same block, and
    a second block notice with the same name (clash) falls back instead of failing."""
    event = BlockEvent(
        uid="rogue", topic="devices/rogue/fault", started_at=100.5, blocked_at=101.0,
        rate_per_s=50.0, count=200, samples=("E1",), reason="flood",
    )  # fmt: skip
    notice = BlockNotice(event, ("sec@example.com",), ("ops@example.com",), "gw", DOMAIN)
    for box in pair:
        box.ingest([], blocks=[notice])
    a, b = pair
    expected = [
        group_message_id("g", kind, notice_identity("g", kind, "rogue", 100.5), DOMAIN)
        for kind in ("security-notice", "block-notice")
    ]
    assert _message_ids(a) == _message_ids(b) == expected
    a.ingest([], blocks=[notice])
    assert _message_ids(a)[2:] == [f"<faultmail.gw.{a.instance}.{n}@{DOMAIN}>" for n in (3, 4)]


def test_single_mode_keeps_its_message_ids_and_stores_identities(outbox: Outbox) -> None:
    """Without a group: Message-IDs per database as before, identities filled with group "",
    nothing mirrored."""
    outbox.ingest([pending_decision(1, payload=b"a")])
    plan_mails(outbox, 10.0, DOMAIN, "gw")
    assert _message_ids(outbox) == [f"<faultmail.gw.{outbox.instance}.1@{DOMAIN}>"]
    assert _column(outbox, "identity") == [alert_identity("", "p", "E", 1, b"a")]
    assert _column(outbox, "mirror") == [None]
    assert outbox.mirror_done() == []


def test_every_stored_alert_has_an_identity_and_only_accepted_ones_are_mirrored(
    tmp_path: Path,
) -> None:
    """Group mode: accepted (pending) alerts are mirrored; a suppressed or rejected message is
    stored with an identity but no held record."""
    box = Outbox(tmp_path / "o.db", group="g")
    raw = RawMessage("devices/x/fault", b"not json", mid=1, qos=1, dup=False, received_at=1.0)
    pending = pending_decision(1)
    assert pending.fault is not None
    suppressed = Decision.suppressed(
        pending_decision(2).raw, pending.fault, Reason.NO_ROUTE, "no route"
    )
    try:
        box.ingest([pending, suppressed, Decision.rejected(raw, Reason.INVALID_JSON, "bad", "x")])
        assert _column(box, "state") == ["pending", "suppressed", "rejected"]
        assert _column(box, "mirror") == [MirrorState.HELD.value, None, None]
        identities = _column(box, "identity")
        assert all(isinstance(i, str) and len(i) == 32 for i in identities)
        assert identities[2] == alert_identity("g", "x", "", None, b"not json")
    finally:
        box.close()


def test_mirror_done_reports_finished_alerts_until_cleared(tmp_path: Path) -> None:
    """An alert's held record is reported once the alert is no longer pending (sent or dead),
    oldest first and bounded by `limit`, and no more once marked cleared."""
    box = Outbox(tmp_path / "o.db", group="g")
    try:
        box.ingest([pending_decision(n, code=f"E{n}") for n in (1, 2, 3)])
        assert box.mirror_done() == []
        plan_mails(box, 10.0, DOMAIN, "gw")
        first, second, third = box.claim_due(10.0, 10)
        box.mark_sent(first, 11.0, AuditEntry("send_attempt", "sent", first.id))
        box.mark_dead(third, 11.0, AuditEntry("send_attempt", "dead", third.id))
        ids = _column(box, "identity")
        assert box.mirror_done() == [(1, ids[0]), (3, ids[2])]
        assert box.mirror_done(limit=1) == [(1, ids[0])]
        box.mark_mirror_cleared([1])
        assert box.mirror_done() == [(3, ids[2])]
        assert _column(box, "mirror") == [MirrorState.CLEARED, MirrorState.HELD, MirrorState.HELD]
        box.mark_mirror_cleared([])  # nothing to do, no error
        box.mark_sent(second, 12.0, AuditEntry("send_attempt", "sent", second.id))
        box.mark_mirror_cleared([2, 3])
        assert box.mirror_done() == []
    finally:
        box.close()


def test_still_held_names_pending_alerts_whose_record_is_due(tmp_path: Path) -> None:
    """Intake publishes held records after its commit only for pending alerts with one due:
    a redelivery of an alert already mailed and cleared must not leave a record behind."""
    box = Outbox(tmp_path / "o.db", group="g")
    try:
        box.ingest([pending_decision(n, code=f"E{n}") for n in (1, 2)])
        one, two = (str(i) for i in _column(box, "identity"))
        assert box.still_held([one, two, "unknown"]) == {one, two}
        assert box.still_held([]) == set()
        plan_mails(box, 10.0, DOMAIN, "gw")
        first, _ = box.claim_due(10.0, 10)
        box.mark_sent(first, 11.0, AuditEntry("send_attempt", "sent", first.id))
        assert box.still_held([one, two]) == {two}
        box.mark_mirror_cleared([1])
        assert box.still_held([one, two]) == {two}
    finally:
        box.close()


def test_a_shared_record_is_not_reported_while_another_alert_needs_it(tmp_path: Path) -> None:
    """Two alerts with one identity share one held record topic: the first one's record is
    reported only when the second is no longer pending either."""
    box = Outbox(tmp_path / "o.db", group="g")
    try:
        box.ingest([pending_decision(None, payload=b"same", at=1.0)])
        plan_mails(box, 10.0, DOMAIN, "gw")
        _send_all(box, 11.0)
        assert [i for i, _ in box.mirror_done()] == [1]
        box.ingest([pending_decision(None, payload=b"same", at=12.0)])
        assert box.mirror_done() == []
        plan_mails(box, 20.0, DOMAIN, "gw")
        _send_all(box, 21.0)
        assert [i for i, _ in box.mirror_done()] == [1, 2]
    finally:
        box.close()


def test_history_keeps_alerts_whose_record_is_not_cleared(tmp_path: Path) -> None:
    """Pruning never deletes a finished alert whose held record is still out: it would never
    be reported, and a survivor would mail it again."""
    box = Outbox(tmp_path / "o.db", group="g")
    try:
        box.ingest([pending_decision(1, code="E1"), pending_decision(2, code="E2")])
        plan_mails(box, 10.0, DOMAIN, "gw")
        _send_all(box, 11.0)
        box.mark_mirror_cleared([1])
        assert box.prune_history(before=100.0) == 1
        assert box.mirror_done() == [(2, alert_identity("g", "p", "E2", 2, b"2"))]
    finally:
        box.close()


def _v4_file(path: Path) -> None:
    """An outbox as faultmail wrote it at schema 4: one pending alert not yet in a mail."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 5):
        upgrade(conn, version)
    conn.execute(
        "INSERT INTO alerts (received_at, topic, uid, seq, code, severity, fault_state, "
        "recipients, state) VALUES (1.0, 'devices/p/fault', 'p', 1, 'E', 'error', 'active', "
        f"?, '{AlertState.PENDING}')",
        (json.dumps(["ops@example.com"]),),
    )
    conn.close()


def test_a_version_4_outbox_is_migrated_and_its_alerts_keep_single_mode_ids(
    tmp_path: Path,
) -> None:
    """Schema 4 → 5 adds identity and mirror (NULL for the old alerts) and the partial index;
    in group mode an old alert, having no identity, is mailed with a single-mode Message-ID
    and is not mirrored, while a new one gets both."""
    path = tmp_path / "outbox.db"
    _v4_file(path)
    box = Outbox(path, group="g")
    try:
        conn = box._conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        index = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'alerts_mirror'"
        ).fetchone()[0]
        assert "WHERE mirror = 1" in index
        assert (_column(box, "identity"), _column(box, "mirror")) == ([None], [None])
        box.ingest([pending_decision(2)])
        plan_mails(box, 10.0, DOMAIN, "gw")
        old, new = _message_ids(box)
        assert old == f"<faultmail.gw.{box.instance}.1@{DOMAIN}>"
        assert new == group_message_id("g", "alert", alert_identity("g", "p", "E", 2, b"2"), DOMAIN)
        assert _column(box, "mirror") == [None, MirrorState.HELD]
    finally:
        box.close()
