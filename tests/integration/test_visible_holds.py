"""Visible holds with the real daemon (issue 16): a pending alert says why it waits and until
when in `alerts --json`, `queue --json` lists it (held alerts as well as planned mails), and
`status` sums pending alerts by reason: a repeat window, the relay down, the per-minute cap."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, eventually, fault

pytestmark = pytest.mark.integration


def _json_lines(dm: Daemon, *args: str) -> list[dict[str, Any]]:
    result = dm.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _status(dm: Daemon) -> dict[str, Any]:
    result = dm.cli("status", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _epoch(rfc3339: str) -> float:
    assert rfc3339.endswith("Z"), rfc3339
    return datetime.fromisoformat(rfc3339).timestamp()


def _pending(dm: Daemon) -> list[dict[str, Any]]:
    return [a for a in dm.alerts() if a["state"] == "pending"]


def _all_held_by(dm: Daemon, reason: str) -> list[dict[str, Any]] | None:
    """The pending alerts once there are some and every one gives `reason`."""
    pending = _pending(dm)
    return pending if pending and all(a["reason"] == reason for a in pending) else None


def test_repeats_held_by_a_repeat_window_say_so_until_its_end(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Five repeats after the first mail: each says repeat window with the window's end as
    due_at, queue --json shows them as one held row, status counts five for that reason."""
    dm = daemon(daemon_config(mail={"repeat_window": 600}, delivery={"poll_interval": 0.5}))
    publish_many(mosquitto, [fault("pump-1", 1)])
    relay.wait_for(1)
    first_sent = time.time()
    publish_many(mosquitto, [fault("pump-1", seq) for seq in range(2, 7)])
    held = dm.wait_for_alerts(lambda a: len(a) == 6 and a[0]["state"] == "sent")[1:]
    assert [a["state"] for a in held] == ["pending"] * 5
    assert {a["reason"] for a in held} == {"repeat window"}
    (due,) = {a["due_at"] for a in held}
    assert first_sent + 590 <= _epoch(due) <= first_sent + 601
    (row,) = _json_lines(dm, "queue")
    assert (row["state"], row["reason"], row["due_at"]) == ("held", "repeat window", due)
    assert row["alert_ids"] == [a["id"] for a in held] and row["uid"] == "pump-1"
    assert _status(dm)["pending_by_reason"] == {"repeat window": 5}
    table = dm.cli("queue")
    assert table.returncode == 0 and "repeat window" in table.stdout and due in table.stdout
    assert len(relay.mails) == 1


def test_alerts_waiting_for_an_unreachable_relay_say_so(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Relay down: the pending alerts say relay unreachable with a due time, queue --json lists
    their mails with the same reason, status sums them; all go out once it is back."""
    config = daemon_config(delivery={"retry_initial": 30.0, "retry_max": 60.0})
    dm = daemon(config)
    relay.stop()
    publish_many(mosquitto, [fault("p1", 1), fault("p2", 1), fault("p3", 1)])
    eventually(
        lambda: [r for r in audit(dm) if r["outcome"] == "retry:connect"],
        what="a failed connect attempt",
    )
    pending = eventually(
        lambda: _all_held_by(dm, "relay unreachable"), what="every pending alert held by the relay"
    )
    assert len(pending) == 3
    now = time.time()
    for alert in pending:
        assert now - 1 <= _epoch(alert["due_at"]) <= now + 80, alert
    rows = _json_lines(dm, "queue")
    assert sorted(i for r in rows for i in r["alert_ids"]) == [a["id"] for a in pending]
    assert {r["reason"] for r in rows} == {"relay unreachable"}
    assert all(r["due_at"] is not None for r in rows)
    assert _status(dm)["pending_by_reason"] == {"relay unreachable": 3}
    relay.start()
    relay.wait_for(3, timeout=30)
    dm.wait_for_alerts(all_settled(3))
    assert _status(dm)["pending_by_reason"] == {}


def test_mails_over_the_per_minute_cap_wait_for_a_free_slot(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A cap of 2 a minute and five alerts: two go out, three say mails-per-minute cap with the
    minute's end as due_at, in alerts --json, queue --json and status."""
    dm = daemon(daemon_config(delivery={"max_mails_per_minute": 2}))
    started = time.time()
    publish_many(mosquitto, [fault(f"p{n}", 1) for n in range(5)])
    relay.wait_for(2)
    pending = eventually(
        lambda: _all_held_by(dm, "mails-per-minute cap"), what="the three left held by the cap"
    )
    assert len(pending) == 3
    for alert in pending:
        assert started + 30 <= _epoch(alert["due_at"]) <= time.time() + 61, alert
    rows = _json_lines(dm, "queue")
    assert [r["reason"] for r in rows] == ["mails-per-minute cap"] * 3
    assert sorted(i for r in rows for i in r["alert_ids"]) == [a["id"] for a in pending]
    assert _status(dm)["pending_by_reason"] == {"mails-per-minute cap": 3}
    assert len(relay.mails) == 2
