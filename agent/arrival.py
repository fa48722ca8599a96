"""What a PUBLISH becomes as it leaves paho's network thread (agent.ingest calls these there).

An alert becomes a RawMessage: a topic forwarded by another group member loses its route prefix
and is marked forwarded, and an oversized payload travels as a sample with its size. A message on
the acknowledgement topic is stored at once. Neither may raise: an exception on paho's thread
would end its network loop (see PITFALLS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.models import PAYLOAD_SAMPLE_BYTES, RawMessage

if TYPE_CHECKING:
    # Types only: agent.mqtt_client loads paho (without dnspython) for the daemon.
    import paho.mqtt.client as mqtt


def raw_message(
    message: mqtt.MQTTMessage,
    topic: str,
    *,
    route_prefix: str | None,
    max_payload_bytes: int,
    received_at: float,
    generation: int,
    source: int,
) -> RawMessage:
    """The alert message an arrived PUBLISH on `topic` (decoded) is."""
    forwarded = False
    if route_prefix is not None and topic.startswith(route_prefix):
        topic, forwarded = topic[len(route_prefix) :], True
    payload = message.payload
    size = len(payload)
    if size > max_payload_bytes:
        # Measured before any copy: an oversized payload (MQTT 3.1.1 cannot tell the
        # broker our limit) is queued as a sample only, and rejected too_large with `size`.
        payload = payload[:PAYLOAD_SAMPLE_BYTES]
    return RawMessage(
        topic=topic,
        payload=bytes(payload),
        mid=message.mid,
        qos=message.qos,
        dup=bool(message.dup),
        received_at=received_at,
        generation=generation,
        # Rates and windows run on this: NTP may step the wall clock (see RawMessage).
        received_mono=time.monotonic(),
        retain=bool(message.retain),
        size=size,
        source=source,
        forwarded=forwarded,
    )


def take_ack(
    message: mqtt.MQTTMessage,
    on_ack: Callable[[bytes], bool] | None,
    log: structlog.typing.FilteringBoundLogger,
) -> bool:
    """Store an ack message through `on_ack`; whether we are done with it, so that its PUBACK
    may go out. Never raises."""
    try:
        if message.retain:
            # A retained ack replayed at subscribe is old news: it could acknowledge a
            # problem that began after it. Live acks arrive with the retain flag clear.
            log.warning("mqtt_ack_rejected", reason="retained ack ignored")
            return True
        return on_ack is not None and on_ack(bytes(message.payload))
    except Exception:
        log.exception("mqtt_ack_failed")
        return True  # a message that breaks the handler would break it again
