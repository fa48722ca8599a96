"""Load for the fault tests: a device-like MQTT publisher and the fault payloads it sends.

`DevicePublisher` is what a real device does: it publishes its messages at QoS 1 at a steady
rate and, when the connection drops (broker restart, network trouble), reconnects and publishes
again everything the broker has not acknowledged yet. That is at-least-once: the broker may get
a message twice (identical bytes, same seq), and the daemon must store it once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness.publisher import BrokerAddress
from tests.integration.support import fault

Message = tuple[str, bytes]


def faults(count: int, *, devices: int = 5, prefix: str = "dev", start: int = 1) -> list[Message]:
    """count fault messages spread round-robin over `devices` devices, seq counting per device."""
    out = []
    for n in range(count):
        seq = start + n // devices
        out.append(fault(f"{prefix}{n % devices:02d}", seq, message=f"Overpressure {prefix}"))
    return out


def key_of(message: Message) -> tuple[str, int]:
    """(uid, seq) of a fault message."""
    topic, payload = message
    return topic.split("/")[1], int(json.loads(payload)["seq"])


class DevicePublisher:
    """Publishes `messages` at QoS 1, `rate` per second, in a thread; survives broker outages.

    Each connection is a fresh clean session (as a device without persistent state). On a lost
    connection everything sent but not PUBACKed is published again on the next one.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        messages: Sequence[Message],
        *,
        rate: float,
        protocol: str = "5",
        client_id: str | None = None,
        keepalive: int = 10,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.broker = broker
        self.messages = list(messages)
        self.rate = rate
        self.protocol = protocol
        self.client_id = client_id or f"device-{uuid.uuid4().hex[:8]}"
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._sent: set[int] = set()
        self._acked: set[int] = set()
        self._publishes = 0
        self.connects = 0
        self.connect_failures = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-publisher", daemon=True)

    # -- control -------------------------------------------------------------------------------

    def start(self) -> DevicePublisher:
        self._thread.start()
        return self

    def wait(self, timeout: float) -> bool:
        """Wait until every message is PUBACKed; False on timeout."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def __enter__(self) -> DevicePublisher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- figures -------------------------------------------------------------------------------

    @property
    def published(self) -> list[tuple[str, int]]:
        """(uid, seq) of every message published at least once."""
        with self._lock:
            return [key_of(self.messages[i]) for i in sorted(self._sent)]

    @property
    def acked(self) -> int:
        with self._lock:
            return len(self._acked)

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self._sent)

    @property
    def republished(self) -> int:
        """PUBLISH packets beyond the first one per message (after connection losses)."""
        with self._lock:
            return self._publishes - len(self._sent)

    def summary(self) -> str:
        return (
            f"publisher: {self.acked}/{len(self.messages)} acked, {self.connects} connects, "
            f"{self.connect_failures} failed connects, {self.republished} republished"
        )

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # pragma: no cover - reported by the test
            self.errors.append(error)
            raise

    def _loop(self) -> None:
        started = time.monotonic()
        next_index = 0
        total = len(self.messages)
        while not self._stop.is_set():
            client = self._connect()
            if client is None:
                self.connect_failures += 1
                self._stop.wait(0.2)
                continue
            self.connects += 1
            infos: dict[int, mqtt.MQTTMessageInfo] = {}
            with self._lock:
                again = sorted(self._sent - self._acked)
            for index in again:
                infos[index] = self._publish(client, index)
            try:
                while not self._stop.is_set():
                    if client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                        break
                    if not client.is_connected():
                        break
                    for index, info in list(infos.items()):
                        if info.is_published():
                            with self._lock:
                                self._acked.add(index)
                            del infos[index]
                    now = time.monotonic()
                    while next_index < total and started + next_index / self.rate <= now:
                        infos[next_index] = self._publish(client, next_index)
                        with self._lock:
                            self._sent.add(next_index)
                        next_index += 1
                    with self._lock:
                        if len(self._acked) == total:
                            self._done.set()
                            return
            finally:
                self._close(client)

    def _publish(self, client: mqtt.Client, index: int) -> mqtt.MQTTMessageInfo:
        topic, payload = self.messages[index]
        with self._lock:
            self._publishes += 1
        return client.publish(topic, payload, qos=1)

    def _connect(self) -> mqtt.Client | None:
        v5 = self.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        outcome: dict[str, Any] = {}

        def on_connect(*args: Any) -> None:
            outcome["reason"] = args[3]

        client.on_connect = on_connect
        kwargs: dict[str, Any] = {}
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            kwargs = {"clean_start": True, "properties": properties}
        try:
            client.connect(self.broker.host, self.broker.port, self.keepalive, **kwargs)
        except OSError:
            self._close(client)
            return None
        deadline = time.monotonic() + 5
        while "reason" not in outcome and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        reason = outcome.get("reason")
        if reason is None or reason.is_failure:
            self._close(client)
            return None
        return client

    @staticmethod
    def _close(client: mqtt.Client) -> None:
        """Disconnect if still connected and make sure the socket is closed."""
        if client.is_connected():
            client.disconnect()
            deadline = time.monotonic() + 1
            while client.socket() is not None and time.monotonic() < deadline:
                if client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                    break
        # paho closes its socket and its wake-up socketpair only here (or in __del__).
        client._reset_sockets()
