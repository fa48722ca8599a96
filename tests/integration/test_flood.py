"""Flood defence with a real broker: a rogue device is blocked, the others are not slowed."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import audit, eventually, fault

pytestmark = pytest.mark.integration

ROGUE_MESSAGES = 5000


def _devices(dm: Any) -> dict[str, dict[str, Any]]:
    result = dm.cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    return {row["uid"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_rogue_device_is_blocked_once_and_others_still_get_through(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    record_property: Any,
) -> None:
    """A full-speed flood: one block, one security notice, few rogue mails, normal mails on time."""
    config = daemon_config(
        flood={
            "rate": 2.0,
            "burst": 5,
            "block_threshold": 200,
            "block_window": 10.0,
            "notify": ["security@example.com"],
        },
        policy={"allowed_domains": ["example.com"]},
    )
    dm = daemon(config)
    sent_at: dict[str, float] = {}

    def normal_devices() -> None:
        for round_ in range(4):
            batch = [fault(f"pump-{d}", round_ + 1, code=f"E{round_}") for d in range(5)]
            for topic, _ in batch:
                sent_at[f"{topic.split('/')[1]} E{round_}"] = time.time()
            publish_many(mosquitto, batch)
            time.sleep(0.5)

    normal = threading.Thread(target=normal_devices)
    normal.start()
    rogue = [fault("rogue-1", i, code="E999") for i in range(ROGUE_MESSAGES)]
    publish_many(mosquitto, rogue, timeout=60)
    normal.join()

    def normal_mails() -> list[Any]:
        return [
            m
            for m in relay.mails
            if str(m.message.get("X-Faultmail-Device", "")).startswith("pump-")
        ]

    eventually(lambda: len(normal_mails()) == 20, timeout=30, what="20 normal mails")
    latencies = []
    for mail in normal_mails():
        key = f"{mail.message['X-Faultmail-Device']} {mail.message['X-Faultmail-Code']}"
        latencies.append(mail.received_at.timestamp() - sent_at[key])
    security = [m for m in relay.mails if m.message["X-Faultmail-Kind"] == "security-notice"]
    ops_notice = [m for m in relay.mails if m.message["X-Faultmail-Kind"] == "block-notice"]
    rogue_mails = [
        m
        for m in relay.mails
        if m.message.get("X-Faultmail-Device") == "rogue-1"
        and m.message["X-Faultmail-Kind"] == "alert"
    ]
    assert len(security) == 1 and list(security[0].rcpt_tos) == ["security@example.com"]
    assert len(ops_notice) == 1 and list(ops_notice[0].rcpt_tos) == ["ops@example.com"]
    assert len(rogue_mails) <= 10  # the burst, not thousands
    devices = eventually(
        lambda: (d := _devices(dm)) and d["rogue-1"]["received"] == ROGUE_MESSAGES and d,
        timeout=30,
        what="all rogue messages counted",
    )
    row = devices["rogue-1"]
    assert row["state"] == "blocked"
    stored = [a for a in dm.alerts() if a["uid"] == "rogue-1"]
    # Every rogue message is accounted for: stored as an alert, suppressed or dropped.
    assert len(stored) + row["suppressed"] + row["dropped"] == ROGUE_MESSAGES
    assert any(r["outcome"] == "blocked" for r in audit(dm))
    record_property("rogue_sent", ROGUE_MESSAGES)
    record_property("rogue_mails", len(rogue_mails))
    record_property("normal_worst_latency_s", round(max(latencies), 3))
    print(
        f"\nflood: rogue sent {ROGUE_MESSAGES}, rogue mails {len(rogue_mails)}, security "
        f"notices {len(security)}, normal mails {len(normal_mails())}, worst normal latency "
        f"{max(latencies):.3f} s"
    )


def test_technician_blocks_and_unblocks_from_the_cli(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """devices block stops a device's mails on the running daemon; unblock restores them."""
    dm = daemon()
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1)
    blocked = dm.cli("devices", "block", "p1", "--reason", "sensor replaced")
    assert blocked.returncode == 0, blocked.stderr
    time.sleep(1.5)  # the daemon re-reads the block list at most once a second
    publish_many(mosquitto, [fault("p1", 2)])
    eventually(lambda: _devices(dm)["p1"]["dropped"] == 1, what="the message to be dropped")
    assert len(relay.mails) == 1
    assert dm.cli("devices", "unblock", "p1").returncode == 0
    time.sleep(1.5)
    publish_many(mosquitto, [fault("p1", 3)])
    relay.wait_for(2)
    ops = [(r["outcome"], r["detail"]) for r in audit(dm) if r["event"] == "operator"]
    assert ops[0][0] == "blocked" and "sensor replaced" in ops[0][1]
    assert ops[1][0] == "unblocked"
