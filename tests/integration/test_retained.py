"""Retained faults are mailed once, not after every restart or reconnect (issue 14, item 6).

The daemon re-subscribes on every connect and the broker replays retained messages to a
subscription. MQTT 5: Retain Handling 1 makes the broker replay only to a new subscription.
MQTT 3.1.1: a replay (retain flag) whose topic and payload are already in the outbox is a
duplicate. The payloads here have no `seq`, so the seq-based dedupe cannot help.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault

pytestmark = pytest.mark.integration

TOPIC = "devices/tank-4/fault"
# A device that keeps its current fault as a retained message, with no seq and no ts.
RETAINED = json.dumps({"code": "LVL", "severity": "critical", "message": "Tank low"}).encode()


def _marker(daemon: Daemon, mosquitto: Mosquitto, protocol: str, n: int) -> None:
    """Publish marker n and wait until it is stored: whatever the broker replayed at the
    subscription (before the marker, on the same connection) has been handled by then."""
    publish_many(mosquitto, [fault("marker", n)], protocol=protocol)
    daemon.wait_for_alerts(
        lambda alerts: any(a["uid"] == "marker" and a["seq"] == n for a in alerts)
    )


def _settled(daemon: Daemon) -> list[dict[str, Any]]:
    """Every alert, once none is pending (each mail has had its 250)."""
    return daemon.wait_for_alerts(lambda alerts: all(a["state"] != "pending" for a in alerts))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_fault_is_mailed_once_across_restarts(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    protocol: str,
) -> None:
    """One retained publish and two daemon restarts (repeat_window 0) give one mail, and the
    alert is listed with "retained": true."""
    publish_many(mosquitto, [(TOPIC, RETAINED)], protocol=protocol, retain=True)
    dm = daemon(daemon_config(mqtt={"protocol": protocol}))
    _marker(dm, mosquitto, protocol, 1)
    for n in (2, 3):
        dm.restart()
        _marker(dm, mosquitto, protocol, n)
    alerts = [a for a in _settled(dm) if a["uid"] == "tank-4"]
    tank = [m.subject for m in relay.mails if "tank-4" in m.subject]
    assert tank == ["[CRITICAL] tank-4 LVL: Tank low"]
    assert [(a["state"], a["retained"]) for a in alerts] == [("sent", True)]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_fault_seen_live_is_not_mailed_again_after_reconnect_or_restart(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    protocol: str,
) -> None:
    """A retained fault that arrived live (retain flag clear) is not mailed again when a broker
    restart or a daemon restart makes the broker replay it (retain flag set)."""
    dm = daemon(daemon_config(mqtt={"protocol": protocol}))
    publish_many(mosquitto, [(TOPIC, RETAINED)], protocol=protocol, retain=True)
    _marker(dm, mosquitto, protocol, 1)
    mosquitto.restart()
    _marker(dm, mosquitto, protocol, 2)
    dm.restart()
    _marker(dm, mosquitto, protocol, 3)
    alerts = [a for a in _settled(dm) if a["uid"] == "tank-4"]
    tank = [m.subject for m in relay.mails if "tank-4" in m.subject]
    assert tank == ["[CRITICAL] tank-4 LVL: Tank low"]
    assert [(a["state"], a["retained"]) for a in alerts] == [("sent", False)]
