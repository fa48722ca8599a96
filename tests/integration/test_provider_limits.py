"""Provider limits and the login alarm with the real daemon (issue 16): a relay that refuses our
credentials is one alarm with a handful of AUTH attempts, not a retry per mail; the daily
recipient budget holds mail and survives a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import Subscriber, publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, eventually, fault

pytestmark = pytest.mark.integration

ALERTS = 20
AUTH_RETRY = 2.0  # delivery.auth_retry_interval in these tests
GAUGE = 'faultmail_auth_failing{gateway="gw-test-01"}'


def _status(dm: Daemon) -> dict[str, Any]:
    result = dm.cli("status", "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _events(dm: Daemon, event: str) -> list[dict[str, Any]]:
    return [r for r in dm.log_records() if r.get("event") == event]


def _gauge(prom: Path) -> str | None:
    if not prom.exists():
        return None
    for line in prom.read_text().splitlines():
        if line.startswith(GAUGE):
            return line.split()[-1]
    return None


def test_refused_login_is_one_alarm_until_the_credentials_work(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """20 alerts against a relay refusing our password: a handful of AUTH attempts, one error
    line, the metric, status and the retained MQTT status say so; once the password works all
    20 go out, the alarm clears with one info line."""
    prom = tmp_path / "faultmail.prom"
    user, password = next(iter(relay.users.items()))
    relay.users[user] = "not-the-password"  # as if the password had been changed on the relay
    config = daemon_config(
        delivery={"auth_retry_interval": AUTH_RETRY, "retry_initial": 0.5, "retry_max": 5.0},
        mail={"digest_threshold": 1000},
        extra={"health": {"interval": 1.0, "metrics_textfile": str(prom)}},
    )
    dm = daemon(config)
    topic = "faultmail/gw-test-01/status"
    with Subscriber(mosquitto, [topic], persistent=False) as sub:
        publish_many(mosquitto, [fault(f"pump-{i}", 1) for i in range(ALERTS)])
        eventually(lambda: _events(dm, "relay_auth_failing"), what="the login alarm")
        report = eventually(
            lambda: (r := _status(dm))["relay_login"].startswith("REFUSED") and r,
            what="the alarm in status",
        )
        assert "535" in report["relay_login"]
        assert eventually(lambda: _gauge(prom) == "1", what="faultmail_auth_failing 1")
        beat = eventually(
            lambda: (
                (m := sub.get(timeout=5))
                and json.loads(m.payload).get("auth_failing")
                and json.loads(m.payload)
            ),
            what="the alarm in the retained MQTT status",
        )
        assert "535" in beat["auth_error"]
    # Three retry intervals: every alert is still waiting, and the relay saw a handful of
    # logins (one per interval after the first, which each lane may make; aiosmtplib tries
    # PLAIN, then LOGIN), not 20 mails times retries.
    time.sleep(3 * AUTH_RETRY)
    failed = [a for a in relay.auth_attempts if not a.success]
    elapsed = (failed[-1].at - failed[0].at).total_seconds()
    assert len(failed) <= 2 * (2 + elapsed / AUTH_RETRY) < ALERTS, failed
    assert relay.mails == []
    assert [a["state"] for a in dm.alerts()] == ["pending"] * ALERTS
    assert len(_events(dm, "relay_auth_failing")) == 1
    errors = [r for r in dm.log_records() if r.get("level") == "error"]
    assert [r["event"] for r in errors] == ["relay_auth_failing"]
    assert {r["outcome"] for r in audit(dm) if r["event"] == "send_attempt"} == {"retry:auth"}

    relay.users[user] = password  # the technician fixed the credentials
    mails = relay.wait_for(ALERTS, timeout=30)
    dm.wait_for_alerts(all_settled(ALERTS))
    assert len({m.message_id for m in mails}) == ALERTS
    eventually(lambda: _events(dm, "relay_auth_ok_again"), what="the alarm cleared")
    assert len(_events(dm, "relay_auth_ok_again")) == 1
    assert eventually(lambda: _status(dm)["relay_login"] == "ok", what="status ok again")
    assert eventually(lambda: _gauge(prom) == "0", what="faultmail_auth_failing 0")


def test_microsoft_basic_auth_disabled_reply_is_the_alarm(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Microsoft 365's 535 5.7.139 to AUTH is the login alarm (the mail stays pending, no
    backoff storm); when AUTH is accepted again the mail goes out and the alarm clears."""
    relay.reply_at(
        "auth",
        b"535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
        count=4,  # aiosmtplib tries PLAIN, then LOGIN: two logins refused
    )
    dm = daemon(daemon_config(delivery={"auth_retry_interval": AUTH_RETRY}))
    publish_many(mosquitto, [fault("p1", 1)])
    (alarm,) = eventually(lambda: _events(dm, "relay_auth_failing"), what="the login alarm")
    assert "5.7.139" in alarm["error"]
    (mail,) = relay.wait_for(1, timeout=30)
    (alert,) = dm.wait_for_alerts(all_settled(1))
    assert alert["state"] == "sent" and alert["message_id"] == mail.message_id
    eventually(lambda: _events(dm, "relay_auth_ok_again"), what="the alarm cleared")
    outcomes = [r["outcome"] for r in audit(dm) if r["event"] == "send_attempt"]
    assert outcomes[-1] == "sent" and set(outcomes[:-1]) == {"retry:auth"}
    assert len(_events(dm, "relay_auth_failing")) == 1


def test_daily_recipient_budget_holds_mail_and_survives_a_restart(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """A budget of 3 recipients a day: 3 single-recipient mails go out, the rest wait with one
    warning; after a restart the budget is still spent (counted from the outbox)."""
    config = daemon_config(
        delivery={"max_recipients_per_day": 3},
        mail={"digest_threshold": 1000},
    )
    dm = daemon(config)
    publish_many(mosquitto, [fault(f"pump-{i}", 1) for i in range(5)])
    relay.wait_for(3, timeout=20)
    eventually(lambda: _events(dm, "recipient_budget_reached"), what="the budget warning")
    time.sleep(2)
    assert len(relay.mails) == 3
    states = sorted(a["state"] for a in dm.alerts())
    assert states == ["pending", "pending", "sent", "sent", "sent"]
    dm.restart()
    publish_many(mosquitto, [fault("pump-9", 1)])
    eventually(lambda: _events(dm, "recipient_budget_reached"), what="the budget after restart")
    time.sleep(2)
    assert len(relay.mails) == 3
    assert sum(a["state"] == "pending" for a in dm.alerts()) == 3
