"""Acknowledgements: an acked thread sends no follow-ups; its resolve or escalation says who."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.compose import compose, load_templates
from agent.models import FaultState, MailKind, Severity
from agent.planner import plan_mails
from tests.unit.test_grouping import CTX, RULES, Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "outbox.db")
    yield harness
    harness.outbox.close()


def _notices(h: Harness) -> list[dict[str, object] | None]:
    conn = sqlite3.connect(h.outbox.path)
    try:
        rows = conn.execute("SELECT notice FROM mails ORDER BY id").fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) if r[0] else None for r in rows]


def _ack(h: Harness) -> None:
    result = h.outbox.acknowledge("pump-17", "E042", "eva", "on my way", h.now)
    assert result.error == ""


def test_acked_thread_sends_no_followup(h: Harness) -> None:
    """Repeats after an ack are held past their window: no follow-up mail."""
    h.alert()
    h.tick()
    _ack(h)
    for _ in range(5):
        h.alert()
        h.tick(1.0)
    assert h.tick(600.0) == [] and h.tick(3600.0) == []
    assert h.outbox.next_due() is None


def test_resolve_of_acked_thread_carries_the_ack_and_clears_it(h: Harness) -> None:
    """The resolve goes out at once with the held repeats and who acknowledged; the ack ends."""
    h.alert()
    h.tick()
    _ack(h)
    h.alert()
    h.tick(700.0)
    h.alert(state=FaultState.RESOLVED)
    ((kind, ids, _, _),) = h.tick(1.0)
    assert kind is MailKind.RESOLVED and ids == [2, 3]
    ack = _notices(h)[-1]
    assert ack == {"acknowledged": {"by": "eva", "at": h.now - 701.0, "note": "on my way"}}
    assert h.outbox.acks() == {}
    # The problem comes back: a new alert, and its repeats are followed up again.
    h.alert()
    assert [k for k, *_ in h.tick(10.0)] == [MailKind.ALERT]
    h.alert()
    assert [k for k, *_ in h.tick(601.0)] == [MailKind.FOLLOWUP]


def test_escalation_of_acked_thread_goes_out_and_ends_the_ack(h: Harness) -> None:
    """A more severe alert is mailed at once, says who acknowledged, and repeats resume."""
    h.alert(severity=Severity.WARNING)
    h.tick()
    _ack(h)
    h.alert(severity=Severity.CRITICAL)
    ((kind, _, _, _),) = h.tick(1.0)
    assert kind is MailKind.ALERT
    assert _notices(h)[-1] == {
        "acknowledged": {"by": "eva", "at": h.now - 1.0, "note": "on my way"}
    }
    assert h.outbox.acks() == {}
    h.alert(severity=Severity.CRITICAL)
    assert [k for k, *_ in h.tick(601.0)] == [MailKind.FOLLOWUP]


def test_ack_needs_an_open_thread_and_accepts_an_alert_id(h: Harness) -> None:
    """No open problem: refused; an alert id names its device + code; both audited."""
    refused = h.outbox.acknowledge("pump-17", "E042", "eva", "", h.now)
    assert refused.error == "no open problem pump-17 E042"
    h.alert()
    h.tick()
    done = h.outbox.acknowledge(None, None, "eva", "", h.now, alert_id=1)
    assert (done.uid, done.code, done.error) == ("pump-17", "E042", "")
    assert h.outbox.acknowledge(None, None, "eva", "", h.now, alert_id=99).error == "no alert 99"
    events = [(r["event"], r["outcome"]) for r in h.outbox.audit_log()]
    assert ("ack", "acknowledged") in events


def test_ack_line_in_english_and_czech(h: Harness) -> None:
    """The resolve's text and HTML say who acknowledged, in the mail's language, escaped."""
    h.alert()
    h.tick()
    h.outbox.acknowledge("pump-17", "E042", "Eva <b>", "ventil", h.now)
    h.alert(state=FaultState.RESOLVED)
    plan_mails(h.outbox, h.now + 1, "example.com", "gw-1", RULES)
    (mail,) = h.outbox.claim_due(h.now + 1, 10)
    for lang, line in (("en", "Acknowledged by Eva <b> on "), ("cs", "Převzal(a) Eva <b> ")):
        ctx = dataclasses.replace(CTX, language=lang, templates=load_templates("", lang))
        msg = compose(mail, ctx, h.now + 1).message()
        text, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text is not None and html is not None
        assert line in text.get_content() and ": ventil" in text.get_content()
        assert "Eva &lt;b&gt;" in html.get_content()
