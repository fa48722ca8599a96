"""Health and field commands against the real daemon: status, send-test, metrics, the retained
MQTT status topic with its Last Will, and systemd STATUS= lines."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import free_port
from tests.harness.publisher import Subscriber, publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, eventually, fault

pytestmark = pytest.mark.integration


def test_status_metrics_and_systemd_status(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """status says running with figures; metrics (file and loopback HTTP) and STATUS= agree."""
    prom = tmp_path / "faultmail.prom"
    port = free_port()
    dm = daemon(
        daemon_config(
            extra={"health": {"interval": 1.0, "metrics_textfile": str(prom), "metrics_port": port}}
        )
    )
    publish_many(mosquitto, [fault("p1", 1), ("devices/p1/fault", b"junk")])
    relay.wait_for(1)
    dm.wait_for_alerts(all_settled(2))
    text = eventually(
        lambda: (
            prom.read_text() if prom.exists() and 'outcome="sent"' in prom.read_text() else None
        ),
        what="metrics with a sent mail",
    )
    assert 'faultmail_mails_total{gateway="gw-test-01",outcome="sent"} 1' in text
    assert 'faultmail_alerts_received_total{gateway="gw-test-01",outcome="rejected"} 1' in text
    assert 'faultmail_queue_alerts_pending{gateway="gw-test-01"} 0' in text
    assert 'faultmail_relay_up{gateway="gw-test-01"} 1' in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"faultmail_last_success_timestamp_seconds" in response.read()
    status = dm.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["running"] is True and report["pending_alerts"] == 0
    assert report["last_successful_send"] is not None
    assert eventually(
        lambda: [
            n
            for n in dm.notifications
            if n.startswith("STATUS=pending 0 alerts, 0 dead mails, relay up")
        ],
        what="a STATUS= line",
    )
    dm.kill()
    stopped = dm.cli("status", "--json")
    assert stopped.returncode == 1 and json.loads(stopped.stdout)["running"] is False


def test_retained_status_topic_and_last_will(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
) -> None:
    """A central system sees online with queue figures, and offline after a crash (Last Will)."""
    dm = daemon(daemon_config(extra={"health": {"interval": 1.0}}))
    topic = "faultmail/gw-test-01/status"
    with Subscriber(mosquitto, [topic], persistent=False) as sub:
        beat = eventually(
            lambda: (
                (m := sub.get(timeout=5))
                and json.loads(m.payload).get("pending_alerts") is not None
                and json.loads(m.payload)
            ),
            what="a heartbeat",
        )
        assert beat["state"] == "online" and beat["gateway"] == "gw-test-01"
        dm.kill()
        offline = eventually(
            lambda: (m := sub.get(timeout=5)) and json.loads(m.payload)["state"] == "offline",
            timeout=90,
            what="the Last Will",
        )
        assert offline


def test_send_test_prints_the_relay_reply_and_is_audited(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, relay: Relay
) -> None:
    """send-test sends one real mail through the relay, prints its reply, and is audited."""
    dm = daemon(daemon_config(), start=False)
    result = dm.cli("send-test", "--to", "oncall@example.com")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "sent to oncall@example.com" in result.stdout and "250" in result.stdout
    (mail,) = relay.wait_for(1)
    assert list(mail.rcpt_tos) == ["oncall@example.com"]
    plain = mail.message.get_body(("plain",))
    assert plain is not None
    assert "Test mail from faultmail" in plain.get_content()
    refused = dm.cli("send-test", "--to", "someone@gmail.com")
    assert refused.returncode == 1 and "outside" in refused.stdout
    audit = dm.cli("audit", "--json").stdout.splitlines()
    assert [json.loads(line)["outcome"] for line in audit] == ["sent", "failed"]
