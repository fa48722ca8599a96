"""Silences against the real daemon: faults recorded as silenced, notices, summary, audit."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import ReceivedMail, Relay
from tests.integration.support import audit, eventually, fault


def _alerts(dm: Daemon) -> list[dict[str, Any]]:
    result = dm.cli("alerts", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _text(mail: ReceivedMail) -> str:
    body = mail.message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def _silence_mails(relay: Relay) -> list[ReceivedMail]:
    return [m for m in relay.mails if m.message["X-Faultmail-Kind"] == "silence-notice"]


def test_silence_holds_alerts_notifies_and_mails_the_summary_at_its_end(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A pattern silence records matching faults as silenced, mails a start notice, and at its
    early end one summary listing them, and the still-active fault is mailed as active."""
    dm = daemon()
    added = dm.cli("silence", "add", "--device", "pump-*", "--for", "1h", "--reason", "valve swap")
    assert added.returncode == 0, added.stderr
    start = eventually(lambda: _silence_mails(relay), what="the start notice")[0]
    assert "[SILENCE]" in start.subject and "pump-*" in start.subject
    assert "valve swap" in _text(start)
    publish_many(
        mosquitto,
        [
            fault("pump-1", 1, code="E1"),
            fault("pump-1", 2, code="E1"),
            fault("pump-2", 1, code="E2"),
            fault("pump-2", 2, code="E2", state="resolved"),
            fault("fan-1", 1, code="E9"),
        ],
    )
    eventually(
        lambda: [m for m in relay.mails if m.message["X-Faultmail-Device"] == "fan-1"],
        what="the unsilenced device's mail",
    )
    alerts = eventually(
        lambda: [a for a in _alerts(dm) if a["state"] == "silenced"] or None,
        what="silenced alerts",
    )
    assert sorted(a["uid"] for a in _alerts(dm) if a["state"] == "silenced") == [
        "pump-1",
        "pump-1",
        "pump-2",
        "pump-2",
    ]
    assert all(a["reason"] == "silence 1" for a in alerts)
    assert not [m for m in relay.mails if str(m.message["X-Faultmail-Device"]).startswith("pump")]
    listed = dm.cli("silence", "list", "--json")
    assert json.loads(listed.stdout.splitlines()[0])["alerts"] == 4
    assert dm.cli("silence", "expire", "1").returncode == 0
    ended = eventually(
        lambda: [m for m in _silence_mails(relay) if "[SILENCE ENDED]" in m.subject],
        what="the end summary",
    )
    assert len(ended) == 1
    text = _text(ended[0])
    assert "pump-1 E1 (critical): 2 alert(s)" in text and "pump-2 E2" in text
    assert "Still active" in text and "pump-1 E1" in text.split("Still active")[1]
    again = eventually(
        lambda: [m for m in relay.mails if m.message["X-Faultmail-Device"] == "pump-1"],
        what="the still-active fault mailed as active",
    )
    assert len(again) == 1
    assert not [m for m in relay.mails if m.message["X-Faultmail-Device"] == "pump-2"]
    events = [(r["event"], r["outcome"]) for r in audit(dm) if r["event"] == "silence"]
    assert events == [("silence", "created"), ("silence", "ended_early"), ("silence", "ended")]


def test_silence_add_requires_a_reason_and_respects_the_maximum_duration(
    daemon: DaemonFactory,
) -> None:
    """A silence longer than silence.max_duration (7 days by default) is refused."""
    dm = daemon()
    too_long = dm.cli("silence", "add", "--device", "p1", "--for", "8d", "--reason", "x")
    assert too_long.returncode == 2 and "max_duration" in too_long.stderr
    no_reason = dm.cli("silence", "add", "--device", "p1", "--for", "1h", "--reason", " ")
    assert no_reason.returncode == 2
    assert dm.cli("silence", "list", "--json").stdout.strip() == ""
