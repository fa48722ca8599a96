"""The core pipeline end to end: real Mosquitto, real TLS+AUTH relay, the daemon as a process."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, fault, states

pytestmark = pytest.mark.integration


def test_faults_become_mails_with_identity_headers(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Each fault becomes one mail with Message-ID, Date, From, To, Auto-Submitted and subject."""
    # One relay connection: the second mail must reuse the first one's session.
    dm = daemon(daemon_config(smtp={"connections": 1}))
    # `faultmail run` validated the configuration, then exec'd the daemon in its own PID (the
    # one the harness started, READY came from it), which runs without pydantic (issue 18).
    assert dm.pid is not None
    assert "pydantic" not in Path(f"/proc/{dm.pid}/maps").read_text()
    publish_many(
        mosquitto,
        [fault("pump-17", 1), fault("pump-18", 1, severity="error", code="E7", message="Low flow")],
    )
    mails = relay.wait_for(2, timeout=15)
    by_subject = {m.subject: m for m in mails}
    assert set(by_subject) == {
        "[CRITICAL] pump-17 E042: Overpressure #1",
        "[ERROR] pump-18 E7: Low flow #1",
    }
    for mail in mails:
        msg = mail.message
        assert list(mail.rcpt_tos) == ["ops@example.com"] and mail.mail_from == "gw@example.com"
        assert msg["From"] == "Gateway Test <gw@example.com>" and msg["To"] == "ops@example.com"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    alerts = dm.wait_for_alerts(all_settled(2))
    assert {a["message_id"] for a in alerts} == {m.message_id for m in mails}
    assert all(a["state"] == "sent" and a["sent_at"] for a in alerts)
    # AUTH happened once, inside TLS, and the connection was reused for the second mail.
    assert [(a.success, a.tls) for a in relay.auth_attempts] == [(True, True)]
    assert relay.cleartext_auth_commands == []


def test_alerts_json_has_the_documented_fields(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """`alerts --json` prints one object per alert with the documented keys, rejects included."""
    dm = daemon()
    publish_many(mosquitto, [fault("p1", 5), ("devices/p2/fault", b"{broken")])
    relay.wait_for(1)
    alerts = dm.wait_for_alerts(all_settled(2))
    required = {
        "id",
        "uid",
        "seq",
        "code",
        "severity",
        "state",
        "message_id",
        "received_at",
        "sent_at",
        "reason",
    }
    assert all(required <= set(a) for a in alerts)
    sent, rejected = sorted(alerts, key=lambda a: a["uid"])
    assert (sent["uid"], sent["seq"], sent["code"], sent["severity"], sent["state"]) == (
        "p1",
        5,
        "E042",
        "critical",
        "sent",
    )
    assert rejected["state"] == "rejected" and rejected["reason"].startswith("invalid_json")
    assert rejected["message_id"] is None


def test_implicit_tls_relay(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    pki: object,
) -> None:
    """security = "tls" submits over implicit TLS (the port 465 style) with AUTH."""
    from tests.harness.pki import TestPKI

    assert isinstance(pki, TestPKI)
    with Relay(tmp_path / "relay465", pki, mode="tls", users=relay.users) as tls_relay:
        dm = daemon(daemon_config(smtp={"port": tls_relay.port, "security": "tls"}))
        publish_many(mosquitto, [fault("pump-1", 1)])
        (mail,) = tls_relay.wait_for(1)
        assert mail.subject.startswith("[CRITICAL] pump-1")
        assert [(a.success, a.tls) for a in tls_relay.auth_attempts] == [(True, True)]
        assert dm.wait_for_alerts(all_settled(1))[0]["state"] == "sent"


def test_malformed_payloads_are_rejected_and_daemon_carries_on(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Bad payloads are rejected with reasons and audit rows; good ones around them go out."""
    dm = daemon()
    bad = [
        ("devices/p1/fault", b"\xff\xfe"),
        ("devices/p1/fault", b'{"code": "E1", "severity": "fatal", "message": "m"}'),
        ("devices/p1/fault", b'{"code": "E1", "severity": "error", "message": "m", "uid": "p2"}'),
        ("devices/p1/fault", b"[" * 8000),
        ("devices/p1/fault", b"x" * 20000),
    ]
    publish_many(mosquitto, [fault("p1", 1), *bad, fault("p1", 2)])
    relay.wait_for(2)
    alerts = dm.wait_for_alerts(all_settled(7))
    assert states(alerts) == {"sent": 2, "rejected": 5}
    reasons = sorted(a["reason"].split(":")[0] for a in alerts if a["state"] == "rejected")
    assert reasons == ["bad_field", "not_utf8", "too_deep", "too_large", "uid_mismatch"]
    rejected_ids = {a["id"] for a in alerts if a["state"] == "rejected"}
    audited = {i for row in audit(dm) if row["outcome"] == "rejected" for i in row["alert_ids"]}
    assert audited == rejected_ids
    assert dm.running


def test_unrouted_severity_is_suppressed_not_lost(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """An alert below every route's minimum severity is recorded as suppressed with a reason."""
    config = daemon_config(
        routes=[{"topics": ["devices/+/fault"], "min_severity": "error", "to": ["ops@example.com"]}]
    )
    dm = daemon(config)
    publish_many(mosquitto, [fault("p1", 1, severity="info"), fault("p1", 2)])
    relay.wait_for(1)
    alerts = dm.wait_for_alerts(all_settled(2))
    assert states(alerts) == {"sent": 1, "suppressed": 1}
    suppressed = next(a for a in alerts if a["state"] == "suppressed")
    assert suppressed["seq"] == 1 and suppressed["reason"].startswith("no_route")


def test_every_attempt_is_logged_and_audited_without_secrets(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    tmp_path: Path,
) -> None:
    """Each attempt has a JSON log line and an audit row with ids, relay, outcome, code, time."""
    dm = daemon()
    relay.fail_data(1, code=451)
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1, timeout=15)
    dm.wait_for_alerts(all_settled(1))
    rows = [r for r in audit(dm) if r["event"] == "send_attempt"]
    assert [(r["outcome"], r["smtp_code"]) for r in rows] == [("retry:smtp", 451), ("sent", 250)]
    assert all(r["alert_ids"] == [1] and r["relay"].endswith(f":{relay.port}") for r in rows)
    assert all(r["duration_ms"] is not None for r in rows)
    logged = [r for r in dm.log_records() if r.get("event") == "send_attempt"]
    assert [(r["outcome"], r["smtp_code"]) for r in logged] == [("retry", 451), ("sent", 250)]
    assert all(r["alert_ids"] == [1] and "duration_ms" in r and "relay" in r for r in logged)
    password = (tmp_path / "smtp-password").read_text().strip()
    assert password not in dm.log_text()
    assert password not in dm.cli("config", "check").stdout


def test_sigterm_exits_cleanly(daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay) -> None:
    """SIGTERM stops the daemon with exit code 0 well within 10 s."""
    dm = daemon()
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1)
    code, seconds = dm.terminate(timeout=10)
    assert code == 0 and seconds < 10
