"""The MQTT side: connect, subscribe with QoS 1 on a persistent session, hand messages on.

paho-mqtt runs its network loop in its own thread. Messages leave this module as RawMessage
through `sink`; nothing is acknowledged here on arrival (manual_ack): the intake acks a message
only after its alert is committed to the outbox.

The one exception is the acknowledgement topic (`faultmail/<gateway id>/ack`, when an `on_ack`
is given): such a message is handed to `on_ack` on paho's thread, which stores it, and its
PUBACK goes out once it is stored (or refused as invalid), ahead of alerts still in intake.
Brokers match a PUBACK by packet id; only MQTT-4.6.0-2's ordering is not kept for this topic.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from agent import mqtt_client
from agent.arrival import raw_message, take_ack
from agent.imports import without_dnspython
from agent.models import RawMessage

# Loaded first without dnspython (paho only wants it for connect_srv); the imports below reuse it.
without_dnspython("paho.mqtt.client")
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

if TYPE_CHECKING:
    from agent.settings import MqttSettings


@dataclass(frozen=True, slots=True)
class Session:
    """Which broker session a client holds and what it asks of it.

    Single mode: mqtt.client_id and mqtt.topics. A group (agent.group) gives members other
    client ids, `$share/` filters, a route prefix, and a Will on the lease topic; a takeover of a
    dead member's session subscribes to nothing, drops the member's filters and does not
    reconnect once the member takes its session back.
    """

    client_id: str
    filters: tuple[str, ...]
    unsubscribe: tuple[str, ...] = ()
    # Topics under this prefix were forwarded by another member: stripped, marked forwarded.
    route_prefix: str | None = None
    # A retained Last Will (topic, payload); an empty payload clears the retained message.
    will: tuple[str, bytes] | None = None
    source: int = 0
    reconnect: bool = True


class Ingest:
    """A paho client on a persistent session that passes each PUBLISH to `sink`."""

    def __init__(
        self,
        settings: MqttSettings,
        sink: Callable[[RawMessage], None],
        on_subscribed: Callable[[], None],
        clock: Callable[[], float],
        status_topic: str | None = None,
        ack_topic: str | None = None,
        on_ack: Callable[[bytes], bool] | None = None,
        session: Session | None = None,
    ) -> None:
        self.session = session or Session(settings.client_id, tuple(settings.topics))
        # What arrived and what was acknowledged: a takeover drains until the two meet.
        self.received = 0
        self.acked = 0
        # A group member starts its data connection when the group says (agent.group).
        self.started = False
        self.last_message = time.monotonic()
        self._status_topic = status_topic
        # on_ack(payload) -> True: done with it (stored, or invalid and dropped): PUBACK;
        # False: storage failed, no PUBACK, the broker sends it again after a reconnect.
        self._ack_topic = ack_topic if on_ack is not None else None
        self._on_ack = on_ack
        self._settings = settings
        self._sink = sink
        self._on_subscribed = on_subscribed
        self._clock = clock
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._stopping = False
        self.log = structlog.get_logger("faultmail.ingest")
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt_client.new_client(
            self._settings,
            self.session.client_id,
            reconnect=self.session.reconnect,
            status_topic=self._status_topic,
            will=self.session.will,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe_done
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting with backoff until stop()."""
        mqtt_client.connect_async(self._client, self._settings)
        self._client.loop_start()
        self.started = True

    def network_alive(self) -> bool:
        """Whether paho's network thread still runs (it ends for good if a callback raises)."""
        thread: threading.Thread | None = getattr(self._client, "_thread", None)
        return thread is not None and thread.is_alive()

    def ack(self, raw: RawMessage) -> bool:
        """Send the PUBACK for a stored message, if the connection that brought it still stands.

        Packet ids are only meaningful on their own connection; after a reconnect the broker
        redelivers unacknowledged messages itself, and the outbox recognises the duplicates.
        """
        if raw.qos == 0:
            return True
        with self._lock:
            if raw.generation != self._generation or not self._connected:
                return False
            self._client.ack(raw.mid, raw.qos)
            self.acked += 1
            return True

    def connected(self) -> bool:
        return self._connected

    def end_session(self) -> None:
        """Disconnect and have the broker drop this session (a drained takeover's last act)."""
        self._stopping = True
        mqtt_client.end_session(self._client, self._settings, self.session.client_id, self.log)

    def publish_status(self, payload: str) -> None:
        """Retained heartbeat on the status topic (dropped while disconnected: the next one
        follows within health.interval)."""
        if self._status_topic and self._connected:
            self._client.publish(self._status_topic, payload, qos=0, retain=True)

    def stop(self) -> None:
        """Disconnect (queued PUBACKs go out first) and stop the network thread."""
        self._stopping = True
        if self._status_topic and self._connected:
            # A clean DISCONNECT suppresses the Last Will: say "offline" ourselves.
            self._client.publish(self._status_topic, mqtt_client.OFFLINE, qos=1, retain=True)
        self._client.disconnect()
        self._client.loop_stop()

    # ---- paho callbacks: network thread; keep them short and never raise ----------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.log.error(
                "mqtt_connect_refused",
                reason=str(reason_code),
                broker=f"{self._settings.host}:{self._settings.port}",
            )
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        if self._status_topic:
            client.publish(self._status_topic, json.dumps({"state": "online"}), qos=1, retain=True)
        self.log.info(
            "mqtt_connected",
            broker=f"{self._settings.host}:{self._settings.port}",
            session_present=bool(flags.session_present),
        )
        if self.session.unsubscribe:
            client.unsubscribe(list(self.session.unsubscribe))
        if not self._topics():
            self._on_subscribed()
            return
        mqtt_client.subscribe(client, self._topics(), self._settings.protocol)

    def _topics(self) -> list[str]:
        """What we subscribe to: the alert topics, then the ack topic if there is one."""
        return [*self.session.filters, *([self._ack_topic] if self._ack_topic else [])]

    def _on_subscribe_done(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [t for t, rc in zip(self._topics(), reason_codes, strict=False) if rc.is_failure]
        if self._ack_topic in refused:
            # Acks are a convenience: without them alerts still flow (and `faultmail ack`).
            self.log.warning(
                "mqtt_ack_subscribe_refused",
                topic=self._ack_topic,
                fix="allow this client to subscribe to the ack topic in the broker ACL",
            )
            refused.remove(self._ack_topic)
        if refused:
            self.log.error(
                "mqtt_subscribe_refused",
                topics=refused,
                fix="allow this client to subscribe to these topics in the broker ACL",
            )
            return
        self.log.info("mqtt_subscribed", topics=list(self.session.filters))
        self._on_subscribed()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
        if self._stopping:
            self.log.info("mqtt_disconnected", reason=str(reason_code))
        else:
            self.log.warning(
                "mqtt_disconnected",
                reason=str(reason_code),
                note="reconnecting; the broker keeps our session meanwhile",
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message._topic.decode("utf-8", errors="replace")
        if self._ack_topic is not None and topic == self._ack_topic:
            self._take_ack(message)
            return
        self.received += 1
        self.last_message = time.monotonic()
        self._sink(
            raw_message(
                message,
                topic,
                route_prefix=self.session.route_prefix,
                max_payload_bytes=self._settings.max_payload_bytes,
                received_at=self._clock(),
                generation=self._generation,
                source=self.session.source,
            )
        )

    def _take_ack(self, message: mqtt.MQTTMessage) -> None:
        """Store an ack message (agent.arrival), then PUBACK it. Never raises: an exception on
        paho's thread would end its network loop (see PITFALLS)."""
        if take_ack(message, self._on_ack, self.log) and message.qos > 0:
            with self._lock:
                if self._connected:
                    self._client.ack(message.mid, message.qos)
