"""The test harness itself, checked with smtplib and paho only (no daemon involved)."""

from __future__ import annotations

import json
import queue
import smtplib
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import Credentials
from tests.harness.daemon import Daemon, DaemonError, write_config
from tests.harness.firmware import load_firmware_sim
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.publisher import MqttError, Subscriber, publish_many
from tests.harness.relay import Relay

pytestmark = pytest.mark.integration

MAIL = (
    b"From: Gateway Test <gw@example.com>\r\n"
    b"To: ops@example.com\r\n"
    b"Subject: [CRITICAL] pump-01 E042: Overpressure\r\n"
    b"Message-ID: <smoke-1@gw-test-01>\r\n"
    b"\r\n"
    b"Pressure 9.7 bar, limit 8.0 bar.\r\n"
)


def test_starttls_relay_records_mail_submitted_with_login(
    relay: Relay, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """smtplib with STARTTLS and AUTH LOGIN delivers, and the relay records mail and AUTH."""
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.starttls(context=pki.client_ssl_context())
        client.ehlo("gw")
        client.login(relay_credentials.username, relay_credentials.password)
        client.sendmail("gw@example.com", ["ops@example.com"], MAIL)

    [mail] = relay.wait_for(1, timeout=5)
    assert mail.rcpt_tos == ("ops@example.com",)
    assert mail.message["Subject"] == "[CRITICAL] pump-01 E042: Overpressure"
    assert mail.message_id == "<smoke-1@gw-test-01>"
    assert mail.tls and mail.auth_user == "gw@example.com"
    [attempt] = relay.auth_attempts
    assert attempt.success and attempt.tls and attempt.username == "gw@example.com"
    assert relay.connections == 1


def test_starttls_relay_refuses_mail_before_starttls(relay: Relay) -> None:
    """The STARTTLS relay answers 530 to anything but EHLO/STARTTLS/QUIT in clear text."""
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.ehlo("gw")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, _ = client.mail("gw@example.com")
    assert code == 530
    assert relay.auth_attempts == []


def test_starttls_relay_records_auth_sent_before_starttls(relay: Relay) -> None:
    """An AUTH line sent before STARTTLS is refused, and the relay records it as cleartext."""
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.ehlo("gw")
        code, _ = client.docmd("AUTH", "PLAIN AGd3QGV4YW1wbGUuY29tAHNlY3JldA==")
    assert code == 530
    assert relay.cleartext_auth_commands == [b"AUTH PLAIN AGd3QGV4YW1wbGUuY29tAHNlY3JldA=="]
    assert relay.auth_attempts == []


def test_slow_data_stores_mail_but_answers_late(
    relay: Relay, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """slow_data keeps the mail yet delays the 250, so an impatient client times out."""
    relay.slow_data(1, seconds=3)
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.starttls(context=pki.client_ssl_context())
        client.login(relay_credentials.username, relay_credentials.password)
        assert client.sock is not None
        client.sock.settimeout(0.5)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            client.sendmail("gw@example.com", ["ops@example.com"], MAIL)
        client.close()
    assert len(relay.wait_for(1, timeout=5)) == 1
    assert not any(b"AUTH" in data.upper() for data in relay.cleartext)


def test_plain_auth_relay_offers_auth_but_not_starttls(tmp_path: Path) -> None:
    """The hostile relay advertises AUTH without STARTTLS and records clear-text credentials."""
    with Relay(tmp_path / "relay", mode="plain-auth", users={"u@example.com": "pw"}) as relay:
        with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
            client.ehlo("gw")
            assert client.has_extn("auth")
            assert not client.has_extn("starttls")
            client.login("u@example.com", "pw")
        [attempt] = relay.auth_attempts
    assert attempt.success and not attempt.tls


def test_implicit_tls_relay_accepts_auth(tmp_path: Path, pki: TestPKI) -> None:
    """The port-465 style relay speaks TLS from the first byte and accepts AUTH there."""
    with Relay(tmp_path / "relay", pki, mode="tls", users={"u@example.com": "pw"}) as relay:
        context = pki.client_ssl_context()
        with smtplib.SMTP_SSL("localhost", relay.port, context=context, timeout=10) as client:
            client.login("u@example.com", "pw")
            client.sendmail("u@example.com", ["ops@example.com"], MAIL)
        [mail] = relay.wait_for(1, timeout=5)
        [attempt] = relay.auth_attempts
    assert mail.tls and attempt.tls and attempt.tls_version in {"TLSv1.2", "TLSv1.3"}


def test_fail_data_makes_smtplib_see_451_then_recovers(
    relay: Relay, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """fail_data(1) answers the next DATA with 451; the transaction after it is accepted."""
    relay.fail_data(1)
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.starttls(context=pki.client_ssl_context())
        client.login(relay_credentials.username, relay_credentials.password)
        with pytest.raises(smtplib.SMTPDataError) as failure:
            client.sendmail("gw@example.com", ["ops@example.com"], MAIL)
        client.sendmail("gw@example.com", ["ops@example.com"], MAIL)
    assert failure.value.smtp_code == 451
    assert [a.outcome for a in relay.attempts] == ["failed", "accepted"]
    assert len(relay.wait_for(1, timeout=5)) == 1


def test_reject_rcpt_and_drop_mid_data(
    relay: Relay, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """reject_rcpt refuses one address with 550; drop_mid_data closes without a reply."""
    relay.reject_rcpt("Nobody@example.com")
    relay.drop_mid_data(1, store=True)
    with smtplib.SMTP(relay.host, relay.port, local_hostname="gw", timeout=10) as client:
        client.starttls(context=pki.client_ssl_context())
        client.login(relay_credentials.username, relay_credentials.password)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("gw@example.com", ["nobody@example.com"], MAIL)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail("gw@example.com", ["ops@example.com"], MAIL)
    assert refused.value.recipients["nobody@example.com"][0] == 550
    assert [a.outcome for a in relay.attempts] == ["dropped"]
    assert len(relay.wait_for(1, timeout=5)) == 1  # store=True: the relay kept it anyway


def test_relay_stop_and_start_keeps_port(
    relay: Relay, pki: TestPKI, relay_credentials: Credentials
) -> None:
    """A stopped relay refuses connections; started again it listens on the same port."""
    port = relay.port
    relay.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(relay.host, port, timeout=5)
    relay.start()
    with smtplib.SMTP(relay.host, port, local_hostname="gw", timeout=10) as client:
        client.starttls(context=pki.client_ssl_context())
        client.login(relay_credentials.username, relay_credentials.password)
        client.sendmail("gw@example.com", ["ops@example.com"], MAIL)
    assert relay.port == port and len(relay.wait_for(1, timeout=5)) == 1


def test_mosquitto_with_users_refuses_wrong_password_accepts_right_one(tmp_path: Path) -> None:
    """A broker with a password file rejects a bad password and takes a good one."""
    with Mosquitto(tmp_path / "broker", users={"device": "s3cret"}) as broker:
        with pytest.raises(MqttError, match="refused"):
            publish_many(
                broker, [("devices/pump-01/fault", b"{}")], username="device", password="wrong"
            )
        with pytest.raises(MqttError, match="refused"):
            publish_many(broker, [("devices/pump-01/fault", b"{}")])  # anonymous
        mids = publish_many(
            broker, [("devices/pump-01/fault", b"{}")], username="device", password="s3cret"
        )
    assert len(mids) == 1
    assert "not authorised" in broker.log_text()


def test_mosquitto_tls_listener_needs_the_right_ca(tmp_path: Path, pki: TestPKI) -> None:
    """A TLS broker accepts clients trusting its CA and fails those trusting another CA."""
    other = TestPKI.unrelated().ca_file(tmp_path / "other")
    with Mosquitto(tmp_path / "broker", tls=pki) as broker:
        assert broker.ca_file is not None
        assert publish_many(broker, [("devices/pump-01/fault", b"{}")], protocol="3.1.1")
        with pytest.raises(MqttError):
            publish_many(broker, [("devices/pump-01/fault", b"{}")], ca_file=other)


def test_mosquitto_requiring_client_certificate(tmp_path: Path, pki: TestPKI) -> None:
    """With require_certificate, a client certificate from the CA is needed to connect."""
    client = pki.client_cert_files(tmp_path / "client", "gw-test-01")
    with Mosquitto(tmp_path / "broker", tls=pki, require_certificate=True) as broker:
        mids = publish_many(broker, [("t", b"x")], client_cert=(client.cert, client.key))
        with pytest.raises(MqttError):
            publish_many(broker, [("t", b"x")], timeout=5)
    assert len(mids) == 1


def test_persistent_session_keeps_queued_message_across_sigterm_restart(
    mosquitto: Mosquitto,
) -> None:
    """A QoS 1 message queued for an offline persistent session survives SIGTERM + restart."""
    subscriber = Subscriber(mosquitto, ["devices/+/fault"], client_id="faultmail-smoke")
    subscriber.connect()
    subscriber.disconnect()
    publish_many(mosquitto, [("devices/pump-01/fault", b'{"code":"E042"}')])

    mosquitto.restart()  # SIGTERM: the broker saves its database

    subscriber.connect(subscribe=False)
    try:
        message = subscriber.get(timeout=10)
    finally:
        subscriber.disconnect()
    assert (message.topic, message.payload, message.qos) == (
        "devices/pump-01/fault",
        b'{"code":"E042"}',
        1,
    )


def test_broker_without_persistence_forgets_queued_message(tmp_path: Path) -> None:
    """Without persistence a restart loses the queued message: the test above is meaningful."""
    with Mosquitto(tmp_path / "broker", persistence=False) as broker:
        subscriber = Subscriber(broker, ["devices/+/fault"], client_id="faultmail-smoke")
        subscriber.connect()
        subscriber.disconnect()
        publish_many(broker, [("devices/pump-01/fault", b"{}")])
        broker.restart()
        subscriber.connect(subscribe=False)
        try:
            with pytest.raises(queue.Empty):
                subscriber.get(timeout=1)
        finally:
            subscriber.disconnect()


def test_write_config_produces_the_contract_toml(tmp_path: Path) -> None:
    """write_config writes valid TOML with the tables and [[routes]] of the daemon contract."""
    path = write_config(
        tmp_path / "faultmail.toml",
        gateway_id="gw-test-01",
        state_dir=tmp_path / "state",
        mqtt={"host": "127.0.0.1", "port": 18830, "tls": False, "topics": ["devices/+/fault"]},
        smtp={"from": 'Gateway "Test" <gw@example.com>', "timeout": 10, "ca_file": None},
        policy={"allowed_domains": ["example.com"], "allowed_recipients": []},
        routes=[{"topics": ["devices/+/fault"], "min_severity": "info", "to": ["ops@example.com"]}],
        delivery={"retry_initial": 0.5},
    )
    config = tomllib.loads(path.read_text())
    assert config["gateway"] == {
        "id": "gw-test-01",
        "state_dir": str(tmp_path / "state"),
        "site": "Test site",
    }
    assert config["smtp"] == {"from": 'Gateway "Test" <gw@example.com>', "timeout": 10}
    assert config["routes"][0]["to"] == ["ops@example.com"]
    assert "logging" not in config


def test_daemon_readiness_uses_notify_socket(tmp_path: Path) -> None:
    """Daemon.start returns on READY=1 from NOTIFY_SOCKET and terminate reports the exit code."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, socket, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1\\nSTATUS=running', os.environ['NOTIFY_SOCKET'])\n"
        "s.close()\n"
        "time.sleep(60)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "faultmail.toml"
    with Daemon(config, tmp_path / "d", python=str(fake)) as daemon:
        assert daemon.notifications == ["READY=1", "STATUS=running"]
        code, elapsed = daemon.terminate(5)
    assert code == 0 and elapsed < 5
    assert f"args ['-m', 'agent', 'run', '--config', '{config}']" in daemon.log_text()


def test_daemon_start_fails_with_log_when_process_exits(tmp_path: Path) -> None:
    """A daemon that exits before READY=1 makes start raise with its output."""
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('bad config')\nsys.exit(2)\n")
    fake.chmod(0o755)
    daemon = Daemon(tmp_path / "faultmail.toml", tmp_path / "d", python=str(fake))
    try:
        with pytest.raises(DaemonError, match="bad config"):
            daemon.start(timeout=10)
    finally:
        daemon.close()


def test_firmware_sim_payloads_follow_the_device_contract() -> None:
    """build_payloads gives per-device increasing seq, matching uids and mixed severities."""
    sim = load_firmware_sim()
    messages = sim.build_payloads(scenario="faults", devices=3, count=8, seed=1, seq_start=1)
    payloads = [json.loads(m.payload) for m in messages]
    assert [p["uid"] for p in payloads[:3]] == ["pump-01", "pump-02", "pump-03"]
    assert [m.topic for m in messages[:1]] == ["devices/pump-01/fault"]
    assert {p["severity"] for p in payloads} == {"critical", "error", "warning", "info"}
    for uid in ("pump-01", "pump-02", "pump-03"):
        seqs = [p["seq"] for p in payloads if p["uid"] == uid]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(
        len(m.payload) <= 16 * 1024 and isinstance(p["ts"], int)
        for m, p in zip(messages, payloads, strict=True)
    )


def test_firmware_sim_malformed_payloads_are_each_broken() -> None:
    """Every malformed kind breaks the device contract in the way its name says."""
    sim = load_firmware_sim()
    by_kind = {m.kind: m.payload for m in sim.build_payloads(scenario="malformed", seq_start=1)}
    assert set(by_kind) == set(sim.MALFORMED_KINDS)
    with pytest.raises(json.JSONDecodeError):
        json.loads(by_kind["invalid-json"])
    with pytest.raises(UnicodeDecodeError):
        by_kind["not-utf8"].decode("utf-8")
    assert "code" not in json.loads(by_kind["missing-code"])
    assert json.loads(by_kind["wrong-severity"])["severity"] == "fatal"
    assert json.loads(by_kind["uid-mismatch"])["uid"] != "pump-02"
    assert len(by_kind["oversize"]) > 16 * 1024
    assert len(by_kind["deeply-nested"]) <= 16 * 1024
    with pytest.raises(RecursionError):
        json.loads(by_kind["deeply-nested"])


def test_firmware_sim_cli_publishes_and_waits_for_pubacks(mosquitto: Mosquitto) -> None:
    """The CLI publishes a cycle, prints one JSON line per acked message and exits 0."""
    sim = load_firmware_sim()
    subscriber = Subscriber(mosquitto, ["devices/+/fault"]).connect()
    try:
        code = sim.main(
            [
                "--port",
                str(mosquitto.port),
                "--scenario",
                "cycle",
                "--devices",
                "2",
                "--json",
                "--seq-start",
                "1",
            ]
        )
        got = [subscriber.get(timeout=5) for _ in range(4)]
    finally:
        subscriber.disconnect()
    assert code == 0
    states = [json.loads(m.payload)["state"] for m in got]
    assert states == ["active", "resolved", "active", "resolved"]


def test_firmware_sim_exits_non_zero_when_broker_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With nothing listening, the CLI exits 2 and says it could not connect."""
    sim = load_firmware_sim()
    code = sim.main(["--port", "1", "--count", "1"])
    assert code == 2
    assert "cannot connect to MQTT broker 127.0.0.1:1" in capsys.readouterr().err


def test_relay_credentials_file_is_private(relay_credentials: Credentials) -> None:
    """The SMTP password file the daemon reads is mode 0600 and holds the password."""
    mode = stat.S_IMODE(relay_credentials.password_file.stat().st_mode)
    assert mode == 0o600
    assert relay_credentials.password_file.read_text().strip() == relay_credentials.password
