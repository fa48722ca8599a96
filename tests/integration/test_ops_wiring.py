"""The daemon as shipped wires the site HMI ack topic and [[maintenance]] windows: an ack
published on faultmail/<gateway>/ack is stored and audited, and a window open now silences the
devices it names (with its start notice) while others are mailed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import audit, eventually, fault

pytestmark = pytest.mark.integration

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def test_ack_published_by_a_site_hmi_reaches_the_daemon(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """An HMI's ack on faultmail/<gateway>/ack is stored by the running daemon and audited
    with who sent it; the daemon goes on mailing."""
    dm = daemon(daemon_config(mail={"repeat_window": 60}))
    publish_many(mosquitto, [fault("pump-17", 1)])
    relay.wait_for(1)
    ack = {"device": "pump-17", "code": "E042", "by": "HMI hall 2", "note": "valve ordered"}
    publish_many(mosquitto, [("faultmail/gw-test-01/ack", json.dumps(ack).encode())])
    row = eventually(
        lambda: next((r for r in audit(dm) if r["event"] == "ack"), None),
        what="the ack's audit row",
    )
    assert row["outcome"] == "acknowledged" and "HMI hall 2 (mqtt)" in row["detail"]
    publish_many(mosquitto, [fault("pump-18", 1)])
    relay.wait_for(2)


def test_a_maintenance_window_open_now_silences_its_devices(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A [[maintenance]] window that began an hour ago is a silence: its devices' faults are
    recorded as silenced (never lost), the route gets the start notice, other devices mail."""
    start = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    window = {
        "name": "night",
        "reason": "PLC backup",
        "devices": ["fan-*"],
        "days": DAYS,
        "start": start,
        "duration": "3h",
        "timezone": "UTC",
    }
    dm = daemon(daemon_config(extra={"maintenance": [window]}))
    publish_many(mosquitto, [fault("fan-1", 1), fault("pump-1", 1)])

    def settled() -> list[dict[str, object]] | None:
        alerts = dm.alerts()
        done = len(alerts) == 2 and all(a["state"] != "pending" for a in alerts)
        return alerts if done else None

    alerts = {a["uid"]: a for a in eventually(settled, what="both alerts settled")}
    assert alerts["fan-1"]["state"] == "silenced" and alerts["pump-1"]["state"] == "sent"
    kinds = [m.message["X-Faultmail-Kind"] for m in relay.wait_for(2)]
    assert "silence-notice" in kinds and "alert" in kinds
