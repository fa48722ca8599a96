"""Acknowledgements against the real daemon: no repeat follow-ups, the resolve carries the ack."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import ReceivedMail, Relay
from tests.integration.support import audit, eventually, fault

WINDOW = 1.5


def _alerts(dm: Daemon) -> list[dict[str, Any]]:
    result = dm.cli("alerts", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _kinds(relay: Relay) -> list[str]:
    return [str(m.message["X-Faultmail-Kind"]) for m in relay.mails]


def _notice_of(state_dir: Path, mail: ReceivedMail) -> dict[str, Any] | None:
    conn = sqlite3.connect(f"file:{state_dir / 'outbox.db'}?mode=ro", uri=True)
    try:
        (notice,) = conn.execute(
            "SELECT notice FROM mails WHERE message_id = ?", (str(mail.message["Message-ID"]),)
        ).fetchone()
    finally:
        conn.close()
    return json.loads(notice) if notice else None


def test_ack_stops_followups_and_the_resolve_carries_it(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    tmp_path: Path,
) -> None:
    """After `faultmail ack pump-1 E1`, repeats past the repeat window mail nothing; the
    RESOLVED mail goes out in the thread with who acknowledged; all of it audited."""
    state = tmp_path / "state"
    dm = daemon(daemon_config(mail={"repeat_window": WINDOW}, state_dir=state))
    publish_many(mosquitto, [fault("pump-1", 1, code="E1")])
    eventually(lambda: relay.mails or None, what="the first alert mail")
    acked = dm.cli("ack", "pump-1/E1", "--by", "eva", "--note", "valve ordered")
    assert acked.returncode == 0, acked.stderr
    publish_many(mosquitto, [fault("pump-1", n, code="E1") for n in (2, 3)])
    eventually(lambda: len(_alerts(dm)) == 3 or None, what="the repeats stored")
    # Three repeat windows pass: without the ack a follow-up would have gone out.
    time.sleep(3 * WINDOW)
    assert _kinds(relay) == ["alert"]
    assert {a["state"] for a in _alerts(dm) if a["id"] > 1} == {"pending"}
    publish_many(mosquitto, [fault("pump-1", 4, code="E1", state="resolved")])
    resolved = eventually(
        lambda: [m for m in relay.mails if m.message["X-Faultmail-Kind"] == "resolved"] or None,
        what="the resolved mail",
    )[0]
    assert _kinds(relay) == ["alert", "resolved"]
    assert resolved.message["In-Reply-To"] == relay.mails[0].message["Message-ID"]
    notice = _notice_of(state, resolved)
    assert notice is not None
    assert notice["acknowledged"]["by"] == "eva"
    assert notice["acknowledged"]["note"] == "valve ordered"
    body = resolved.message.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Acknowledged by eva on " in body.get_content()
    assert ": valve ordered" in body.get_content()
    events = [(r["event"], r["outcome"]) for r in audit(dm) if r["event"] == "ack"]
    assert events == [("ack", "acknowledged"), ("ack", "cleared")]


def test_ack_of_an_unknown_problem_or_bad_thread_is_refused(daemon: DaemonFactory) -> None:
    """No open problem: exit 1 and a message; a malformed THREAD: exit 2."""
    dm = daemon()
    missing = dm.cli("ack", "pump-9", "E1")
    assert missing.returncode == 1 and "no open problem pump-9 E1" in missing.stderr
    bad = dm.cli("ack", "pump#9/E1", "--by", "eva")
    assert bad.returncode == 2 and "UID" in bad.stderr
