"""A member's control connection: a clean session (`faultmail-<group>-<instance>-ctl`) whose
Last Will says the member is offline. Status, lease, block and held-record messages go over it,
and forwards; what it hears is handed to the group runtime. Every publish is QoS 1, and the
callers that must know wait for its PUBACK here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from agent.imports import without_dnspython
from agent.liveness import Stage
from agent.tls import tls_context

without_dnspython("paho.mqtt.client")
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

if TYPE_CHECKING:
    from agent.settings import MqttSettings

# How long a held record or forward may wait for its PUBACK before we look again (we wait on
# while the intake beats: an unconfirmed record means no acknowledgement to the broker).
SETTLE_STEP_S = 1.0

Log = structlog.typing.FilteringBoundLogger


class Control:
    """The paho client of the control connection, with its state as the group reads it."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        will: tuple[str, str],
        on_connected: Callable[[], None],
        subscriptions: Callable[[], list[tuple[str, int]]],
        on_message: Callable[[str, bytes], None],
        stopping: threading.Event,
        log: Log,
    ) -> None:
        self._settings = settings
        self._on_connected = on_connected
        self._subscriptions = subscriptions
        self._take = on_message
        self._stopping = stopping
        self.log = log
        self.connected = False
        self.subscribed_at: float | None = None  # monotonic: the first SUBACK
        self.client = self._make_client(client_id, will)

    def _make_client(self, client_id: str, will: tuple[str, str]) -> mqtt.Client:
        s = self._settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311,
            clean_session=None if s.protocol == "5" else True,
        )
        if s.tls:
            client.tls_set_context(tls_context(s.ca_file, s.client_cert, s.client_key))
        if s.username:
            client.username_pw_set(s.username, s.password())
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        # Held records and forwards of a whole batch are in flight at once.
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        s = self._settings
        if s.protocol == "5":
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=True)
        else:
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self.client.loop_start()

    def network_alive(self) -> bool:
        thread: threading.Thread | None = getattr(self.client, "_thread", None)
        return thread is not None and thread.is_alive()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str | bytes, retain: bool = True) -> Any:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            self.log.error("group_connect_refused", reason=str(rc))
            return
        self.connected = True
        self._on_connected()
        client.subscribe(self._subscriptions())
        self.log.info("group_connected")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, p: Any) -> None:
        if self.subscribed_at is None:
            self.subscribed_at = time.monotonic()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connected = False
        if not self._stopping.is_set():
            self.log.warning("group_disconnected", reason=str(rc), note="reconnecting")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg.topic, bytes(msg.payload))
        except Exception:
            # A callback that raises ends paho's network thread (PITFALLS): log, go on.
            self.log.exception("group_message_failed", topic=msg.topic)

    def settle(self, infos: Sequence[Any], stopping: threading.Event, stage: Stage) -> bool:
        """Wait until the broker has every forward and held record (PUBACK); False if we stop
        first. Meanwhile nothing of the batch is acknowledged, so nothing is lost either way."""
        while not stopping.is_set():
            if self.wait(infos, SETTLE_STEP_S):
                return True
            stage.beat()
            self.log.warning(
                "group_publish_waiting",
                pending=sum(not _acknowledged(i) for i in infos),
                note="device messages are acknowledged once the broker has their held "
                "records and forwards",
            )
        return False

    @staticmethod
    def wait(infos: Sequence[Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for info in infos:
            while not _acknowledged(info):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with info._condition:
                    info._condition.wait(min(left, 0.1))
        return True


def _acknowledged(info: Any) -> bool:
    """Whether the broker acknowledged a QoS 1 publish (its PUBACK arrived).

    Not `is_published()`: a publish made while the connection was down carries rc NO_CONN,
    and is_published() raises on it for good, although paho keeps the message and sends it
    after the reconnect (the PUBACK then marks it published all the same)."""
    return bool(getattr(info, "_published", False))
