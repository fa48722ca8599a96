"""The MQTT side secured: TLS with a CA, mutual TLS, passwords from secret files, and the ACL
example that keeps a device to its own topic."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory, write_secret
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.publisher import MqttError, publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault

pytestmark = pytest.mark.integration
ACL = (Path(__file__).resolve().parents[2] / "config" / "mosquitto-acl.example").read_text()


def test_tls_with_password_from_secret_file_and_shipped_acl(
    tmp_path: Path,
    pki: TestPKI,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    relay: Relay,
) -> None:
    """faultmail logs in over verified TLS with a password file; the ACL keeps pump-1 to its
    own topic, so a message it sends as pump-2 never becomes a mail."""
    users = {"faultmail": "fm-secret-1", "pump-1": "p1-secret", "pump-2": "p2-secret"}
    with Mosquitto(tmp_path / "tls-broker", users=users, tls=pki, acl_file=ACL) as broker:
        secret = write_secret(tmp_path / "mqtt-password", users["faultmail"])
        daemon(
            daemon_config(
                mqtt={
                    "host": "localhost",
                    "port": broker.port,
                    "tls": True,
                    "ca_file": str(broker.ca_file),
                    "username": "faultmail",
                    "password_file": str(secret),
                }
            )
        )
        as_pump_1 = partial(
            publish_many,
            broker,
            username="pump-1",
            password=users["pump-1"],
            ca_file=broker.ca_file,
        )
        as_pump_1([fault("pump-2", 1, code="SPOOF")])  # denied by ACL
        as_pump_1([fault("pump-1", 1)])
        (mail,) = relay.wait_for(1, timeout=15)
        assert mail.message["X-Faultmail-Device"] == "pump-1"
        assert all(m.message["X-Faultmail-Code"] != "SPOOF" for m in relay.mails)
        assert "Denied PUBLISH" in broker.log_text()  # the ACL, not luck, stopped it
        assert "fm-secret-1" not in broker.log_text()


def test_mutual_tls(
    tmp_path: Path,
    pki: TestPKI,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    relay: Relay,
) -> None:
    """With require_certificate the daemon connects with its client certificate; a client
    without one is refused."""
    with Mosquitto(tmp_path / "mtls-broker", tls=pki, require_certificate=True) as broker:
        gw = pki.client_cert_files(tmp_path / "certs", "faultmail-gw")
        daemon(
            daemon_config(
                mqtt={
                    "host": "localhost",
                    "port": broker.port,
                    "tls": True,
                    "ca_file": str(gw.ca),
                    "client_cert": str(gw.cert),
                    "client_key": str(gw.key),
                }
            )
        )
        dev = pki.client_cert_files(tmp_path / "certs", "pump-1")
        publish_many(broker, [fault("pump-1", 1)], ca_file=dev.ca, client_cert=(dev.cert, dev.key))
        relay.wait_for(1, timeout=15)
        with pytest.raises(MqttError):
            publish_many(broker, [fault("pump-1", 2)], ca_file=dev.ca, timeout=5)
