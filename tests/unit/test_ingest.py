"""ingest: what paho hands over becomes a RawMessage; an oversized payload is never queued whole.

A real paho client (never connected); its message callback is called as its network thread
would call it.
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from agent.ingest import Ingest
from agent.models import PAYLOAD_SAMPLE_BYTES, RawMessage
from agent.mqtt_client import max_packet_size
from agent.settings import MqttSettings

MIB = 1024 * 1024


def _ingest(sink: list[RawMessage], **settings: object) -> Ingest:
    return Ingest(
        MqttSettings(client_id="faultmail-test", **settings),  # type: ignore[arg-type]
        sink.append,
        on_subscribed=lambda: None,
        clock=time.time,
    )


def _message(payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(mid=7, topic=b"devices/pump-1/fault")
    message.payload = payload
    message.qos = 1
    message.retain = retain
    return message


def test_oversized_payload_is_queued_as_a_sample_with_its_size() -> None:
    """A payload over max_payload_bytes leaves ingest as its first bytes and its size, so a
    megabyte publish under MQTT 3.1.1 is not held in the intake queue."""
    sink: list[RawMessage] = []
    ingest = _ingest(sink, max_payload_bytes=16384)
    ingest._on_message(ingest._client, None, _message(b"x" * (5 * MIB)))
    (raw,) = sink
    assert (len(raw.payload), raw.size, raw.payload_size) == (
        PAYLOAD_SAMPLE_BYTES,
        5 * MIB,
        5 * MIB,
    )


def test_payload_within_the_limit_and_the_retain_flag_are_passed_on() -> None:
    """A payload at the limit is passed on whole; the retain flag comes with it."""
    sink: list[RawMessage] = []
    ingest = _ingest(sink, max_payload_bytes=16384)
    ingest._on_message(ingest._client, None, _message(b"y" * 16384, retain=True))
    ingest._on_message(ingest._client, None, _message(b"z"))
    assert [(len(r.payload), r.payload_size, r.retain) for r in sink] == [
        (16384, 16384, True),
        (1, 1, False),
    ]


def test_announced_packet_size_fits_the_largest_accepted_publish() -> None:
    """The Maximum Packet Size holds a PUBLISH with a payload at the limit, the longest topic
    MQTT allows and 4 KiB of properties, and stays far below a megabyte."""
    limit = 16384
    # Fixed header: 1 byte and a 3-byte remaining length (this size needs 3); topic length 2;
    # packet id 2; property length 2 (for 4 KiB); the properties; the payload.
    largest = 1 + 3 + 2 + 65_535 + 2 + 2 + 4096 + limit
    assert largest <= max_packet_size(limit) < 128 * 1024
