"""`faultmail doctor`'s broker checks against Mosquitto: TLS with a password file, a wrong
password, an untrusted CA, an ACL refusing the subscription, QoS 0 only, and the broker down."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.doctor import Status
from tests.conftest import write_secret
from tests.harness.dns import DnsServer
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.integration.conftest import SettingsFactory, by_name, run

pytestmark = pytest.mark.integration


DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


def test_broker_password_and_certificate(
    tmp_path: Path,
    pki: TestPKI,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
) -> None:
    """Against a TLS broker with a password file: the verified certificate and login are OK; a
    wrong password and an untrusted CA are each a FAIL whose fix names the setting to change."""
    users = {"faultmail": "fm-secret-1"}
    broker = Mosquitto(tmp_path / "tls-broker", users=users, tls=pki)
    broker.start()
    try:
        secret = write_secret(tmp_path / "mqtt-password", users["faultmail"])
        mqtt = {
            "host": "localhost",
            "port": broker.port,
            "tls": True,
            "ca_file": str(broker.ca_file),
            "username": "faultmail",
            "password_file": str(secret),
        }
        found = by_name(run(settings_for(mqtt=mqtt), dns_server))
        assert found["broker TLS"].status is Status.OK
        assert "certificate valid for localhost" in found["broker TLS"].detail
        assert found["broker login"].status is Status.OK
        assert "accepted as faultmail" in found["broker login"].detail
        assert found["broker subscribe"].status is Status.OK

        wrong = write_secret(tmp_path / "wrong-mqtt-password", "nope")
        found = by_name(
            run(
                settings_for(name="wrong.toml", mqtt={**mqtt, "password_file": str(wrong)}),
                dns_server,
            )
        )
        login = found["broker login"]
        assert login.status is Status.FAIL and "refused the login as faultmail" in login.detail
        assert "mqtt.username (faultmail)" in login.fix and str(wrong) in login.fix
        assert "broker subscribe" not in found

        stranger_ca = TestPKI.unrelated().ca_file(tmp_path / "stranger")
        found = by_name(
            run(
                settings_for(name="ca.toml", mqtt={**mqtt, "ca_file": str(stranger_ca)}),
                dns_server,
            )
        )
        tls = found["broker TLS"]
        assert tls.status is Status.FAIL and "not trusted" in tls.detail
        assert "mqtt.ca_file" in tls.fix and "faultmail test CA" in tls.fix
        assert "broker login" not in found
    finally:
        broker.close()
    assert "faultmail-gw-test-01-doctor" in broker.log_text()


def dynsec_config(path: Path, username: str, password: str, readable: str) -> Path:
    """A Mosquitto dynamic-security file: username may subscribe to `readable` only."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": username,
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": 101,
                "roles": [{"rolename": "reader"}],
            }
        ],
        "roles": [
            {
                "rolename": "reader",
                "acls": [{"acltype": "subscribePattern", "topic": readable, "allow": True}],
            }
        ],
        "groups": [],
    }
    path.write_text(json.dumps(config))
    return path


@pytest.mark.skipif(not DYNSEC_PLUGIN.exists(), reason="mosquitto dynamic security plugin")
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_refusing_the_subscription(
    tmp_path: Path,
    settings_for: SettingsFactory,
    dns_server: DnsServer,
    protocol: str,
) -> None:
    """A broker whose ACL refuses our topic filter (SUBACK failure) is a FAIL naming the ACL."""
    work = tmp_path / "dynsec-broker"
    work.mkdir()
    dynsec = dynsec_config(work / "dynsec.json", "faultmail", "fm-secret-2", "other/#")
    broker = Mosquitto(
        work,
        extra_config=f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {dynsec}",
    )
    broker.start()
    try:
        secret = write_secret(tmp_path / "mqtt-password", "fm-secret-2")
        mqtt = {
            "port": broker.port,
            "protocol": protocol,
            "username": "faultmail",
            "password_file": str(secret),
        }
        found = by_name(run(settings_for(mqtt=mqtt), dns_server))
    finally:
        broker.close()
    assert found["broker login"].status is Status.OK
    sub = found["broker subscribe"]
    assert sub.status is Status.FAIL and "the broker refused: devices/+/fault" in sub.detail
    assert "allow faultmail to read these topics in the broker's ACL" in sub.fix


def test_broker_granting_only_qos0_is_a_warning(
    tmp_path: Path, settings_for: SettingsFactory, dns_server: DnsServer
) -> None:
    """A broker that downgrades the subscription to QoS 0 is a WARN: alerts could be lost."""
    broker = Mosquitto(tmp_path / "qos0-broker", extra_config="max_qos 0")
    broker.start()
    try:
        found = by_name(run(settings_for(mqtt={"port": broker.port}), dns_server))
    finally:
        broker.close()
    sub = found["broker subscribe"]
    assert sub.status is Status.WARN and "only QoS 0" in sub.detail
    assert "QoS 1" in sub.fix


def test_broker_down(
    settings_for: SettingsFactory, dns_server: DnsServer, mosquitto: Mosquitto
) -> None:
    """An unreachable broker is one FAIL naming mqtt.host and mqtt.port."""
    mosquitto.stop()
    found = by_name(run(settings_for(), dns_server))
    assert (
        found["broker"].status is Status.FAIL and "mqtt.host and mqtt.port" in found["broker"].fix
    )
    assert "broker login" not in found
