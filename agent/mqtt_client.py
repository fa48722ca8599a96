"""The paho client of an ingest connection: how it is built, connects, subscribes and ends its
session. What it does with messages is agent.ingest's (the callbacks are set there).

Everything here serves one guarantee: the broker keeps what it queued for us while we are down
(a persistent session on either protocol version), and never sends us more than we accept.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import structlog

from agent import mqtt_properties
from agent.imports import without_dnspython
from agent.tls import tls_context

# Loaded first without dnspython (paho only wants it for connect_srv); the imports below reuse it.
without_dnspython("paho.mqtt.client")
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

if TYPE_CHECKING:
    from agent.settings import MqttSettings

OFFLINE = json.dumps({"state": "offline"})

# What a PUBLISH carries besides its payload (MQTT 5, section 3.3): the fixed header (1 byte
# and a remaining length of up to 4), the topic (a 2-byte length and up to 65,535 bytes: any
# topic the protocol allows, so no valid alert is refused for its topic), the packet id (2),
# and the properties (a length of up to 4, then whatever the publisher set: room for 4 KiB).
PUBLISH_OVERHEAD = 1 + 4 + 2 + 65_535 + 2 + 4 + 4096


def max_packet_size(max_payload_bytes: int) -> int:
    """The MQTT 5 Maximum Packet Size we announce: a payload we accept plus every header.

    The broker must not send us a larger packet (MQTT-3.1.2-24); it discards it instead, so a
    publish of many megabytes never reaches our memory. A payload between max_payload_bytes
    and this still arrives, and is rejected (and recorded) as too_large.
    """
    return max_payload_bytes + PUBLISH_OVERHEAD


def new_client(
    s: MqttSettings,
    client_id: str,
    *,
    reconnect: bool,
    status_topic: str | None,
    will: tuple[str, bytes] | None,
) -> mqtt.Client:
    """A client for a persistent session with manual acks, its TLS, login, backoff and Wills."""
    v5 = s.protocol == "5"
    if v5:
        # A property object per message received: made without rebuilding paho's tables.
        mqtt_properties.install()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        reconnect_on_failure=reconnect,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # MQTT 3.1.1: a persistent session keyed by the fixed client id. (For MQTT 5 the
        # equivalent is clean_start=False plus a session expiry, set in connect_async().)
        clean_session=None if v5 else False,
        manual_ack=True,
    )
    _secure(client, s)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if status_topic:
        # The broker tells everyone we are gone if we vanish without saying goodbye.
        client.will_set(status_topic, OFFLINE, qos=1, retain=True)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


def _secure(client: mqtt.Client, s: MqttSettings) -> None:
    """TLS and login, as settings ask."""
    if s.tls:
        client.tls_set_context(tls_context(s.ca_file, s.client_cert, s.client_key))
    if s.username:
        client.username_pw_set(s.username, s.password())


def connect_async(client: mqtt.Client, s: MqttSettings) -> None:
    """Connect in the background, resuming the session the broker keeps for us."""
    if s.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Absent means 0: the broker would end the session, and drop what it queued for
        # us, the moment we disconnect.
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        props.MaximumPacketSize = max_packet_size(s.max_payload_bytes)
        # clean_start=False on every connect: paho's default, MQTT_CLEAN_START_FIRST_ONLY,
        # starts clean on the first connect of each process and so discards the session,
        # i.e. everything the broker queued for us while we were down.
        client.connect_async(
            s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props
        )
    else:
        client.connect_async(s.host, s.port, keepalive=s.keepalive)


def subscribe(client: mqtt.Client, topics: list[str], protocol: str) -> None:
    """Subscribe with QoS 1, asking for retained messages only on a new subscription.

    We subscribe again on every connect, and a SUBSCRIBE makes the broker replay its retained
    messages, in 3.1.1 also when it replaces a subscription we already had (MQTT-3.8.4-3):
    every restart or reconnect would mail them again. MQTT 5 Retain Handling 1 asks for them
    only when the subscription is new (MQTT-3.3.1-10), not when our resumed session holds it.
    3.1.1 has no such option: the outbox recognises a replay (retain flag set) of a message it
    already holds.
    """
    if protocol == "5":
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(t, options) for t in topics])
    else:
        client.subscribe([(t, 1) for t in topics])


def end_session(
    client: mqtt.Client, s: MqttSettings, client_id: str, log: structlog.typing.FilteringBoundLogger
) -> None:
    """Disconnect and have the broker drop this session (a drained takeover's last act).

    MQTT 5: DISCONNECT with Session Expiry Interval 0 (MQTT-3.14.2-2 allows lowering it);
    3.1.1: connect once more with a clean session, which discards the stored one.
    """
    if s.protocol == "5":
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        client.loop_stop()
        return
    client.disconnect()
    client.loop_stop()
    clean = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    _secure(clean, s)
    try:
        clean.connect(s.host, s.port, keepalive=s.keepalive)
        clean.loop_start()
        clean.disconnect()
        clean.loop_stop()
    except OSError as exc:
        log.warning("mqtt_session_end_failed", error=str(exc))
