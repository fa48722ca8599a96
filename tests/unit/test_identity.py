"""agent.identity: one identity per alert across a group, and the Message-IDs made of it."""

from __future__ import annotations

import hashlib

import pytest

from agent.identity import alert_identity, decision_identity, group_message_id, notice_identity
from agent.models import Decision, RawMessage, Reason
from tests.unit.conftest import pending_decision

BASE = alert_identity("brno-gw", "pump-17", "E042", 7, b'{"seq":7}')


def test_same_alert_gives_the_same_identity() -> None:
    """Two members computing from the same message get the same 32 hex characters."""
    assert alert_identity("brno-gw", "pump-17", "E042", 7, b'{"seq":7}') == BASE
    assert len(BASE) == 32 and int(BASE, 16) >= 0


def test_identity_is_the_documented_hash() -> None:
    """The documented formula, so receiving systems and other tools can recompute it: sha256
    of group, uid, code, seq and the payload's sha256 (hex) joined by US (0x1f), first 32 hex
    characters."""
    payload_hash = hashlib.sha256(b"payload").hexdigest().encode()
    expected = hashlib.sha256(b"brno-gw\x1fpump-17\x1fE042\x1f7\x1f" + payload_hash).hexdigest()
    assert alert_identity("brno-gw", "pump-17", "E042", 7, b"payload") == expected[:32]


@pytest.mark.parametrize(
    "changed",
    [
        ("ostrava-gw", "pump-17", "E042", 7),
        ("brno-gw", "pump-18", "E042", 7),
        ("brno-gw", "pump-17", "E043", 7),
        ("brno-gw", "pump-17", "E042", 8),
        ("brno-gw", "pump-17", "E042", None),
    ],
)
def test_any_differing_field_gives_another_identity(
    changed: tuple[str, str, str, int | None],
) -> None:
    """Group, device, code and seq (or its absence) each tell alerts apart."""
    group, uid, code, seq = changed
    assert alert_identity(group, uid, code, seq, b'{"seq":7}') != BASE


def test_group_separates_identical_alerts() -> None:
    """The same device message handled by two different groups is two identities."""
    one = alert_identity("a", "pump-17", "E042", None, b"x")
    two = alert_identity("b", "pump-17", "E042", None, b"x")
    assert one != two


def test_fields_cannot_run_into_each_other() -> None:
    """Moving text across the field boundary does not give the same identity."""
    assert alert_identity("g", "ab", "c", 1, b"") != alert_identity("g", "a", "bc", 1, b"")
    assert alert_identity("g1", "u", "c", 1, b"") != alert_identity("g", "1u", "c", 1, b"")


def test_the_payload_decides_with_or_without_seq() -> None:
    """Other bytes are another alert and the same bytes the same one; with a seq too, so that a
    device counting its seq again after a reboot never gives a new alert an old Message-ID."""
    a = alert_identity("g", "u", "c", None, b'{"code":"c","t":1}')
    b = alert_identity("g", "u", "c", None, b'{"code":"c","t":2}')
    assert a != b
    assert a == alert_identity("g", "u", "c", None, b'{"code":"c","t":1}')
    assert alert_identity("g", "u", "c", 3, b"one") != alert_identity("g", "u", "c", 3, b"two")
    assert alert_identity("g", "u", "c", 3, b"one") == alert_identity("g", "u", "c", 3, b"one")


def test_seq_and_payload_hash_do_not_meet() -> None:
    """A seq-less alert never takes the identity of one with a seq (seq 0 included)."""
    ids = {alert_identity("g", "u", "c", None, b"")} | {
        alert_identity("g", "u", "c", seq, b"") for seq in (0, 1, 2**63 - 1)
    }
    assert len(ids) == 4


def test_notice_identity_same_and_different() -> None:
    """A notice is named by group, kind, device and start; a change to any gives another."""
    base = notice_identity("g", "security-notice", "pump-17", 1_764_570_000.25)
    assert base == notice_identity("g", "security-notice", "pump-17", 1_764_570_000.25)
    others = {
        notice_identity("h", "security-notice", "pump-17", 1_764_570_000.25),
        notice_identity("g", "block-notice", "pump-17", 1_764_570_000.25),
        notice_identity("g", "security-notice", "pump-18", 1_764_570_000.25),
        notice_identity("g", "security-notice", "pump-17", 1_764_570_000.5),
    }
    assert base not in others and len(others) == 4


def test_group_message_id_format() -> None:
    """`<faultmail.<group>.<kind>.<identity>@<domain>>`."""
    assert (
        group_message_id("brno-gw", "alert", "0" * 32, "example.com")
        == f"<faultmail.brno-gw.alert.{'0' * 32}@example.com>"
    )


def test_decision_identity_is_the_alerts_and_single_mode_uses_an_empty_group() -> None:
    """What intake decided maps to alert_identity of its fault and raw payload; a rejected
    message (no fault) to that of its uid and payload, with no code and no seq."""
    decision = pending_decision(5, uid="pump-17", code="E042", payload=b"five")
    assert decision_identity(decision, "g") == alert_identity("g", "pump-17", "E042", 5, b"five")
    assert decision_identity(decision, None) == alert_identity("", "pump-17", "E042", 5, b"five")
    raw = RawMessage("devices/x/fault", b"{", mid=1, qos=1, dup=False, received_at=1.0)
    rejected = Decision.rejected(raw, Reason.INVALID_JSON, "bad", "x")
    assert decision_identity(rejected, "g") == alert_identity("g", "x", "", None, b"{")
