"""The broker checks: TCP, TLS (verified, days to expiry), login, and a QoS 1 subscription to
mqtt.topics, as client id + "-doctor" on a clean session so the daemon's session is left alone.

paho is blocking here; `run_checks` runs `broker_checks` in a worker thread. The MQTT session
itself (`Probe`) serves the group checks too (agent/doctor/group.py).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.doctor.certs import Peer, cert_ok, diagnostic_context, load_der, tls_failure
from agent.doctor.result import Check, Facts, Group, Status, fail, ok, utc_now, warn
from agent.settings import Settings
from agent.tls import tls_context


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_filter(topic: str) -> str:
    """A shared subscription gets its own group: joining the daemon's group would take
    messages away from the daemon for as long as the probe is subscribed."""
    if topic.startswith("$share/"):
        _, group, rest = topic.split("/", 2)
        return f"$share/{group}-doctor/{rest}"
    return topic


def broker_checks(settings: Settings, timeout: float) -> Group:
    """broker, broker TLS, broker login, broker subscribe: each step only if the one before
    it passed."""
    s = settings.mqtt
    where = f"{s.host}:{s.port}"
    facts = Facts()
    try:
        sock = socket.create_connection((s.host, s.port), timeout=timeout)
    except OSError as exc:
        return Group(
            [
                fail(
                    "broker",
                    f"cannot connect to {where}: {exc.strerror or exc}",
                    "check mqtt.host and mqtt.port, that the broker runs and listens there, and "
                    "the firewall",
                )
            ]
        )
    checks = [ok("broker", f"{where} accepts connections (MQTT {s.protocol})")]
    peer = Peer(
        "broker",
        s.host,
        "mqtt.host",
        "mqtt.ca_file",
        s.ca_file,
        "faultmail receives no alerts",
    )
    context: ssl.SSLContext | None = None
    with sock:
        if s.tls:
            try:
                context = tls_context(s.ca_file, s.client_cert, s.client_key)
            except (ssl.SSLError, OSError) as exc:
                checks.append(
                    fail(
                        "broker TLS",
                        f"cannot load mqtt.client_cert/client_key: {exc}",
                        "point mqtt.client_cert and mqtt.client_key at a matching PEM "
                        "certificate and key",
                    )
                )
                return Group(checks, facts)
            try:
                with context.wrap_socket(sock, server_hostname=s.host) as tls:
                    cert = load_der(tls.getpeercert(binary_form=True))
                    version = tls.version()
            except (ssl.SSLError, OSError) as exc:
                seen = _broker_certificate(settings, timeout)
                checks.append(tls_failure("broker TLS", peer, exc, seen, utc_now()))
                return Group(checks, facts)
            if cert is not None:
                facts.certificates.append(("broker", cert))
                checks.append(cert_ok("broker TLS", peer, cert, version, utc_now()))
        elif _is_loopback(s.host):
            checks.append(ok("broker TLS", "plain TCP on the loopback interface (mqtt.tls off)"))
        else:
            checks.append(
                warn(
                    "broker TLS",
                    f"not encrypted: alerts{' and the MQTT password' if s.username else ''} "
                    "cross the network in clear",
                    "enable TLS on the broker and set mqtt.tls = true with mqtt.ca_file",
                )
            )
    checks += _mqtt_session(settings, timeout, context)
    return Group(checks, facts)


def _broker_certificate(settings: Settings, timeout: float) -> x509.Certificate | None:
    s = settings.mqtt
    context = diagnostic_context(s.client_cert, s.client_key)
    try:
        with (
            socket.create_connection((s.host, s.port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=s.host) as tls,
        ):
            return load_der(tls.getpeercert(binary_form=True))
    except (ssl.SSLError, OSError):
        return None


class Probe:
    """One MQTT session of the doctor's own, driven from the calling thread: a clean session
    under a client id of its own, so whatever the daemon's session holds is left alone. The
    broker family subscribes mqtt.topics through it, the group family reads the group's
    status topics; both get the same login, TLS and wording of failures.

    Each network step (login, one SUBACK) waits at most timeout seconds.
    """

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        timeout: float,
        context: ssl.SSLContext | None,
    ) -> None:
        s = settings.mqtt
        self.settings = settings
        self.client_id = client_id
        self.timeout = timeout
        self.v5 = s.protocol == "5"
        self.events: dict[str, Any] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else True,
        )
        client.connect_timeout = timeout
        if context is not None:
            client.tls_set_context(context)
        if s.username:
            client.username_pw_set(s.username, s.password())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        self.events["connack"] = rc
        self.events["connack_properties"] = p

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        self.events["suback"] = rcs

    def _on_disconnect(
        self,
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.events["closed"] = rc

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)

    def pump(self, done: Callable[[], bool], seconds: float | None = None) -> None:
        """Run paho's loop until done() or seconds (default: timeout) have passed, or the
        connection is gone."""
        deadline = time.monotonic() + (self.timeout if seconds is None else seconds)
        while not done() and time.monotonic() < deadline:
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                self.client.loop(timeout=0.01)  # lets paho run on_disconnect
                return

    def login(self, name: str) -> Check:
        """Connect on a clean session: OK when the broker accepted, else a FAIL whose fix
        names the login settings (or the client certificate when the broker just hung up)."""
        s = self.settings.mqtt
        events = self.events
        who = s.username or "anonymous"
        login_fix = (
            f"check mqtt.username ({s.username}) and the password in mqtt.password_file "
            f"({s.password_file}); the broker's password file must have this user"
            if s.username
            else "the broker wants a login: set mqtt.username and mqtt.password_file"
        )
        try:
            if self.v5:
                self.client.connect(s.host, s.port, keepalive=30, clean_start=True)
            else:
                self.client.connect(s.host, s.port, keepalive=30)
        except (OSError, ValueError) as exc:
            return fail(name, f"could not open an MQTT session: {exc}", login_fix)
        self.pump(lambda: "connack" in events or "closed" in events)
        connack: ReasonCode | None = events.get("connack")
        if connack is None:
            detail = (
                "the broker closed the connection before answering the login"
                if "closed" in events
                else f"no answer to the login within {self.timeout:g} s"
            )
            fix = (
                "check mqtt.client_cert/client_key if the broker requires client "
                f"certificates; the broker's log says why ({self.client_id})"
            )
            return fail(name, detail, fix)
        if connack.is_failure:
            return fail(name, f"the broker refused the login as {who}: {connack}", login_fix)
        return ok(name, f"accepted as {who} (client id {self.client_id}, clean session)")

    def connack_property(self, name: str) -> Any:
        """An MQTT 5 CONNACK property by paho's name; None when the broker left it out."""
        properties: Properties | None = self.events.get("connack_properties")
        return getattr(properties, name, None) if properties is not None else None

    def subscribe(self, filters: list[str]) -> list[ReasonCode] | None:
        """Subscribe QoS 1 to filters in one SUBSCRIBE; the SUBACK's codes, None without one."""
        self.events.pop("suback", None)
        if self.v5:
            self.client.subscribe([(t, SubscribeOptions(qos=1)) for t in filters])
        else:
            self.client.subscribe([(t, 1) for t in filters])
        self.pump(lambda: "suback" in self.events or "closed" in self.events)
        codes: list[ReasonCode] | None = self.events.get("suback")
        return codes

    def close(self) -> None:
        """Disconnect if connected, and free what paho holds (its socket pair)."""
        if self.client.is_connected():
            self.client.disconnect()
            self.pump(lambda: "closed" in self.events)
        self.client._reset_sockets()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _mqtt_session(
    settings: Settings, timeout: float, context: ssl.SSLContext | None
) -> list[Check]:
    """Log in on a clean session with our own client id, subscribe QoS 1, disconnect.

    context: the TLS context the broker TLS check already loaded (None without mqtt.tls).
    """
    s = settings.mqtt
    client_id = f"{s.client_id or f'faultmail-{settings.gateway.id}'}-doctor"
    with Probe(settings, client_id, timeout, context) as probe:
        login = probe.login("broker login")
        if login.status is not Status.OK:
            return [login]
        filters = [probe_filter(t) for t in s.topics]
        return [login, suback_check(settings, filters, probe.subscribe(filters), timeout)]


def suback_check(
    settings: Settings, filters: list[str], codes: list[ReasonCode] | None, timeout: float
) -> Check:
    """The verdict on the broker's SUBACK: refused, QoS 0 only, or QoS 1 granted."""
    s = settings.mqtt
    name = "broker subscribe"
    acl_fix = (
        f"allow {s.username or 'this client'} to read these topics in the broker's ACL "
        f"(Mosquitto acl_file: user {s.username or '<name>'} / topic read <filter>)"
    )
    if codes is None:
        return fail(name, f"no SUBACK within {timeout:g} s", acl_fix)
    refused = [f"{t} ({rc})" for t, rc in zip(filters, codes, strict=False) if rc.is_failure]
    if refused:
        return fail(name, f"the broker refused: {', '.join(refused)}", acl_fix)
    low = [t for t, rc in zip(filters, codes, strict=False) if rc.value < 1]
    shared = (
        " (shared subscriptions probed in their own group)"
        if any(t.startswith("$share/") for t in filters)
        else ""
    )
    if low:
        return warn(
            name,
            f"granted only QoS 0 for {', '.join(low)}: alerts can be lost while we are away",
            "allow QoS 1 for these topics on the broker (max_qos)",
        )
    # A SUBACK shows subscribe ACLs (Mosquitto's dynamic security, most other brokers);
    # Mosquitto's acl_file grants every subscription and filters each message on delivery.
    return ok(name, f"QoS 1 granted for {', '.join(filters)}{shared}")
