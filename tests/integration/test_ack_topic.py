"""The MQTT ack topic against a real Mosquitto: stored (then PUBACKed), bad input dropped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.acks import AckListener, ack_topic
from agent.ingest import Ingest
from agent.models import RawMessage
from agent.settings import MqttSettings
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.integration.support import eventually
from tests.unit.test_grouping import Harness

TOPIC = ack_topic("gw-1")


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "outbox.db")
    harness.alert()  # pump-17 E042: an open problem to acknowledge
    harness.tick()
    yield harness
    harness.outbox.close()


def _listening(mosquitto: Mosquitto, h: Harness, sink: list[RawMessage]) -> Ingest:
    subscribed = threading.Event()
    ingest = Ingest(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="faultmail-ack-test"),
        sink.append,
        on_subscribed=subscribed.set,
        clock=time.time,
        ack_topic=TOPIC,
        on_ack=AckListener(h.outbox.path, clock=lambda: h.now),
    )
    ingest.start()
    assert subscribed.wait(10.0)
    return ingest


def test_ack_published_on_the_topic_is_stored_and_audited(mosquitto: Mosquitto, h: Harness) -> None:
    """A valid ack is stored before its PUBACK; bad JSON, a bad UID, an unknown key, an
    unknown problem and a retained ack are dropped (PUBACKed) and paho's thread lives on."""
    sink: list[RawMessage] = []
    ingest = _listening(mosquitto, h, sink)
    try:
        bad = [
            b"{not json",
            b'"\\ud800"',
            json.dumps({"device": "pump 17", "code": "E042", "by": "hmi"}).encode(),
            json.dumps({"device": "pump-17", "code": "E042", "by": "hmi", "x": 1}).encode(),
            json.dumps({"device": "pump-17", "code": "E042"}).encode(),
            json.dumps({"device": "pump-9", "code": "E1", "by": "hmi"}).encode(),
            b"[" * 5000,
        ]
        publish_many(mosquitto, [(TOPIC, p) for p in bad])
        assert h.outbox.acks() == {}
        good = {"device": "pump-17", "code": "E042", "by": "HMI hala 2\n", "note": "Jdu na to"}
        publish_many(mosquitto, [(TOPIC, json.dumps(good).encode())])
        (ack,) = eventually(lambda: list(h.outbox.acks().values()) or None, what="the ack")
        assert (ack.acked_by, ack.note) == ("HMI hala 2", "Jdu na to")
        assert ingest.network_alive() and sink == []
        rows = [r for r in h.outbox.audit_log() if r["event"] == "ack"]
        assert [r["outcome"] for r in rows] == ["acknowledged"]
        assert "(mqtt)" in rows[0]["detail"]
    finally:
        ingest.stop()


def test_a_retained_ack_is_not_applied(mosquitto: Mosquitto, h: Harness) -> None:
    """An ack the broker retained and replays at subscribe acknowledges nothing."""
    msg = {"device": "pump-17", "code": "E042", "by": "hmi"}
    publish_many(mosquitto, [(TOPIC, json.dumps(msg).encode())], retain=True)
    ingest = _listening(mosquitto, h, [])
    try:
        live = {"device": "pump-17", "code": "E042", "by": "live"}
        publish_many(mosquitto, [(TOPIC, json.dumps(live).encode())])  # after the replay
        eventually(lambda: h.outbox.acks() or None, what="the live ack")
        rows = [r for r in h.outbox.audit_log() if r["event"] == "ack"]
        assert [r["detail"] for r in rows] == ["pump-17 E042 by live (mqtt)"]
    finally:
        ingest.stop()
