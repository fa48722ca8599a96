"""Oversized MQTT messages (issue 14, item 1), against the real daemon and a real Mosquitto.

MQTT 5: the daemon announces a Maximum Packet Size, so the broker never hands it a packet
larger than a payload it would accept plus the topic and headers. MQTT 3.1.1 has no such
property: the message arrives, is rejected `too_large` with its size and acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, fault

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _peak_rss(daemon: Daemon) -> int:
    """The daemon's peak resident set (VmHWM) in bytes."""
    assert daemon.pid is not None
    for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_mqtt5_broker_never_delivers_a_payload_of_megabytes(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """MQTT 5: a 24 MiB publish never reaches the daemon (its peak RSS does not grow by it)
    and the next alert is mailed."""
    dm = daemon(daemon_config(mqtt={"protocol": "5"}))
    # Warm up: the first mail loads TLS, compose and signing; measure after it.
    publish_many(mosquitto, [fault("pump-1", 1)])
    relay.wait_for(1)
    dm.wait_for_alerts(all_settled(1))
    before = _peak_rss(dm)
    publish_many(mosquitto, [("devices/pump-2/fault", b"x" * (24 * MIB))], timeout=60)
    publish_many(mosquitto, [fault("pump-3", 1)])
    relay.wait_for(2)
    # Before the fix the payload was read, copied and queued: several times its size.
    assert _peak_rss(dm) - before < 8 * MIB
    alerts = dm.wait_for_alerts(all_settled(2))
    assert [(a["uid"], a["state"]) for a in alerts] == [("pump-1", "sent"), ("pump-3", "sent")]
    assert mosquitto.wait_for_log("Dropping too large outgoing PUBLISH for faultmail-")
    assert dm.running


def test_mqtt311_oversized_payload_is_rejected_with_its_size(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """MQTT 3.1.1 (no Maximum Packet Size): a 2 MiB publish is rejected too_large with its
    size, only a bounded sample is stored, it is acknowledged, and the next alert is mailed."""
    dm = daemon(daemon_config(mqtt={"protocol": "3.1.1"}))
    size = 2 * MIB
    publish_many(mosquitto, [("devices/pump-2/fault", b"x" * size)], protocol="3.1.1", timeout=60)
    publish_many(mosquitto, [fault("pump-3", 1)], protocol="3.1.1")
    (mail,) = relay.wait_for(1)
    assert mail.subject.startswith("[CRITICAL] pump-3")
    alerts = dm.wait_for_alerts(all_settled(2))
    rejected, sent = alerts
    assert (rejected["uid"], rejected["state"]) == ("pump-2", "rejected")
    assert rejected["reason"] == f"too_large: payload is {size} bytes, the limit is 16384"
    assert (sent["uid"], sent["state"]) == ("pump-3", "sent")
    devices = {d["uid"]: d for d in _devices(dm)}
    assert devices["pump-2"]["rejected"] == 1
    db = sqlite3.connect(f"file:{tmp_path / 'state' / 'outbox.db'}?mode=ro", uri=True)
    try:
        (stored,) = db.execute("SELECT length(payload_sample) FROM alerts WHERE uid = 'pump-2'")
    finally:
        db.close()
    assert stored == (512,)
    # Acknowledged: after a restart the broker has nothing left to redeliver.
    dm.restart()
    publish_many(mosquitto, [fault("pump-3", 2)], protocol="3.1.1")
    relay.wait_for(2)
    assert len(dm.wait_for_alerts(all_settled(3))) == 3


def test_shipped_broker_snippet_keeps_megabytes_from_a_mqtt311_daemon(
    tmp_path: Path, daemon: DaemonFactory, daemon_config: DaemonConfigFactory, relay: Relay
) -> None:
    """The message_size_limit of config/mosquitto-faultmail.conf stops a 4 MiB publish at the
    broker, so a 3.1.1 daemon (which cannot announce a limit) never holds it."""
    snippet = (REPO / "config" / "mosquitto-faultmail.conf").read_text()
    (limit,) = [line for line in snippet.splitlines() if line.startswith("message_size_limit ")]
    with Mosquitto(tmp_path / "limited", persistence=True, extra_config=limit) as broker:
        mqtt = {"protocol": "3.1.1", "host": broker.host, "port": broker.port}
        dm = daemon(daemon_config(mqtt=mqtt))
        publish_many(broker, [fault("pump-1", 1)], protocol="3.1.1")
        relay.wait_for(1)
        dm.wait_for_alerts(all_settled(1))
        before = _peak_rss(dm)
        publish_many(broker, [("devices/pump-2/fault", b"x" * (4 * MIB))], protocol="3.1.1")
        publish_many(broker, [fault("pump-3", 1)], protocol="3.1.1")
        relay.wait_for(2)
        assert _peak_rss(dm) - before < 3 * MIB
        alerts = dm.wait_for_alerts(all_settled(2))
        assert [a["uid"] for a in alerts] == ["pump-1", "pump-3"]


def _devices(daemon: Daemon) -> list[dict[str, object]]:
    result = daemon.cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
