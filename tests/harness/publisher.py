"""Small paho-mqtt 2.x clients for tests: a QoS 1 publisher and a persistent-session subscriber."""

from __future__ import annotations

import queue
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class BrokerAddress(Protocol):
    """Anything with host and port (a `Mosquitto`); ca_file set means the listener is TLS."""

    host: str
    port: int


class MqttError(RuntimeError):
    """Connecting, subscribing or publishing failed."""


@dataclass(frozen=True)
class Received:
    """A message a `Subscriber` got."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


class _TrackingContext(ssl.SSLContext):
    """Remembers the sockets it wrapped: paho leaves the socket of a failed TLS handshake open
    (a ResourceWarning, hence an error under pytest), so the harness closes it itself."""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.__dict__.setdefault("wrapped", []).append(sock)
        return sock

    def close_sockets(self) -> None:
        for sock in self.__dict__.pop("wrapped", []):
            sock.close()


def _protocol(protocol: str) -> MQTTProtocolVersion:
    versions = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
    try:
        return versions[protocol]
    except KeyError:
        raise ValueError(f"protocol must be '5' or '3.1.1', not {protocol!r}") from None


def _connect(
    client: mqtt.Client,
    broker: BrokerAddress,
    *,
    protocol: str,
    clean: bool,
    session_expiry: int,
    username: str | None,
    password: str | None,
    ca_file: Path | None,
    client_cert: tuple[Path, Path] | None,
    timeout: float,
) -> None:
    """Connect, start the network thread and wait for a successful CONNACK."""
    if username is not None:
        client.username_pw_set(username, password)
    ca = ca_file if ca_file is not None else getattr(broker, "ca_file", None)
    context = None
    if ca is not None:
        context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(ca))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        client.tls_set_context(context)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        outcome["reason"] = reason_code
        connected.set()

    def on_disconnect(
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        outcome.setdefault("reason", reason_code)  # closed before CONNACK
        outcome.setdefault("closed", True)
        connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    kwargs: dict[str, Any] = {}
    if protocol == "5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if session_expiry:
            properties.SessionExpiryInterval = session_expiry
        kwargs = {"clean_start": clean, "properties": properties}
    try:
        client.connect(broker.host, broker.port, keepalive=30, **kwargs)
    except OSError as error:
        if context is not None:
            context.close_sockets()
        raise MqttError(f"cannot connect to {broker.host}:{broker.port}: {error}") from error
    client.loop_start()
    if not connected.wait(timeout):
        _shutdown(client)
        raise MqttError(f"no CONNACK from {broker.host}:{broker.port} within {timeout} s")
    reason: ReasonCode = outcome["reason"]
    if reason.is_failure or outcome.get("closed"):
        _shutdown(client)
        raise MqttError(f"broker refused the connection: {reason}")
    client.on_disconnect = None


def _shutdown(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _new_client(client_id: str, protocol: str, clean: bool) -> mqtt.Client:
    version = _protocol(protocol)
    if version == mqtt.MQTTv5:
        return mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
        )
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        clean_session=clean,
    )


def publish_many(
    broker: BrokerAddress,
    messages: Iterable[tuple[str, bytes]],
    *,
    protocol: str = "5",
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    retain: bool = False,
    timeout: float = 10.0,
) -> list[int]:
    """Publish every (topic, payload) at QoS 1, wait for all PUBACKs, disconnect; return mids.

    TLS is used when ``ca_file`` is given or the broker object has a ``ca_file``.
    Raises `MqttError` if the connection fails or a PUBACK does not arrive within timeout.
    """
    client = _new_client(client_id or f"harness-pub-{uuid.uuid4().hex[:8]}", protocol, True)
    _connect(
        client,
        broker,
        protocol=protocol,
        clean=True,
        session_expiry=0,
        username=username,
        password=password,
        ca_file=ca_file,
        client_cert=client_cert,
        timeout=timeout,
    )
    try:
        infos = [
            client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages
        ]
        deadline = time.monotonic() + timeout
        for info in infos:
            # wait_for_publish returns silently on timeout: check is_published afterwards.
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise MqttError(f"no PUBACK for mid {info.mid} within {timeout} s")
        return [info.mid for info in infos]
    finally:
        _shutdown(client)


class Subscriber:
    """A QoS 1 subscriber, by default with a persistent session (the daemon's situation).

    MQTT 5: ``clean_start=False`` and a SessionExpiryInterval; 3.1.1: ``clean_session=False``.
    Messages arrive in `messages` (a queue); `disconnect` then `connect` again resumes the
    session, so the broker delivers what it queued meanwhile.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        topics: list[str],
        *,
        client_id: str | None = None,
        protocol: str = "5",
        persistent: bool = True,
        session_expiry: int = 3600,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.client_id = client_id or f"harness-sub-{uuid.uuid4().hex[:8]}"
        self.protocol = protocol
        self.persistent = persistent
        self.session_expiry = session_expiry if persistent else 0
        self._credentials = (username, password)
        self._tls = (ca_file, client_cert)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._client: mqtt.Client | None = None

    def connect(self, *, subscribe: bool = True, timeout: float = 10.0) -> Subscriber:
        client = _new_client(self.client_id, self.protocol, not self.persistent)
        client.on_message = self._on_message
        _connect(
            client,
            self.broker,
            protocol=self.protocol,
            clean=not self.persistent,
            session_expiry=self.session_expiry,
            username=self._credentials[0],
            password=self._credentials[1],
            ca_file=self._tls[0],
            client_cert=self._tls[1],
            timeout=timeout,
        )
        self._client = client
        if subscribe:
            subscribed = threading.Event()
            client.on_subscribe = lambda *_args: subscribed.set()
            client.subscribe([(topic, 1) for topic in self.topics])
            if not subscribed.wait(timeout):
                self.disconnect()
                raise MqttError(f"no SUBACK within {timeout} s")
        return self

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain, msg.dup))

    def get(self, timeout: float = 10.0) -> Received:
        """The next message; raises `queue.Empty` after timeout."""
        return self.messages.get(timeout=timeout)

    def disconnect(self) -> None:
        if self._client is not None:
            _shutdown(self._client)
            self._client = None

    def __enter__(self) -> Subscriber:
        return self.connect()

    def __exit__(self, *_exc: object) -> None:
        self.disconnect()
