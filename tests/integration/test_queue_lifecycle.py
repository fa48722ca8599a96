"""Delivery policy and lifecycle: the relay found again within seconds, dead mails re-queued
from the CLI, per-recipient retries, SIGHUP and a damaged outbox."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, audit, eventually, fault

pytestmark = pytest.mark.integration


def test_relay_back_is_used_within_seconds_not_at_the_next_long_retry(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """With a 60 s retry interval, a relay that returns is found by the probe within seconds."""
    config = daemon_config(
        delivery={"retry_initial": 60.0, "retry_max": 300.0, "probe_interval": 0.5}
    )
    relay.stop()
    dm = daemon(config)
    publish_many(mosquitto, [fault("p1", 1)])
    eventually(
        lambda: [r for r in audit(dm) if r["outcome"] == "retry:connect"], what="a failed connect"
    )
    relay.start()
    back = time.monotonic()
    relay.wait_for(1, timeout=10)
    assert time.monotonic() - back < 5.0
    dm.wait_for_log('"relay_reachable_again"')


def test_dead_mail_is_listed_and_requeued_from_the_cli(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """A 554 makes the mail dead; `queue` shows it; `queue retry ID` sends it after all."""
    dm = daemon(daemon_config(delivery={"poll_interval": 0.5}))
    relay.fail_data(1, code=554, text="5.7.1 Content rejected")
    publish_many(mosquitto, [fault("p1", 1)])
    dm.wait_for_alerts(all_settled(1))
    listing = dm.cli("queue", "--json")
    assert listing.returncode == 0, listing.stderr
    (row,) = [json.loads(line) for line in listing.stdout.splitlines()]
    assert row["state"] == "dead" and "554" in row["last_reply"] and row["alert_ids"] == [1]
    retried = dm.cli("queue", "retry", str(row["id"]))
    assert retried.returncode == 0 and "re-queued 1" in retried.stdout
    (mail,) = relay.wait_for(1, timeout=10)
    (alert,) = dm.wait_for_alerts(lambda a: a[0]["state"] == "sent")
    assert alert["message_id"] == mail.message_id
    assert any(r["outcome"] == "requeued" for r in audit(dm))


def test_temporary_refusal_of_one_recipient_is_retried_for_that_recipient(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """451 for one of two recipients: the other gets it now, the first on a later attempt."""
    config = daemon_config(
        routes=[
            {
                "topics": ["devices/+/fault"],
                "min_severity": "info",
                "to": ["ops@example.com", "oncall@example.com"],
            }
        ]
    )
    relay.reject_rcpt("oncall@example.com", code=451, text="4.2.1 Mailbox busy")
    dm = daemon(config)
    publish_many(mosquitto, [fault("p1", 1)])
    (first,) = relay.wait_for(1)
    assert list(first.rcpt_tos) == ["ops@example.com"]
    relay.clear_faults()
    second = relay.wait_for(2, timeout=15)[1]
    assert list(second.rcpt_tos) == ["oncall@example.com"]
    assert second.message_id == first.message_id
    assert dm.alerts()[0]["state"] == "sent"


def test_sighup_is_acknowledged_and_changes_nothing(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """SIGHUP logs that config changes take a restart, and the daemon keeps working."""
    dm = daemon()
    assert dm.pid is not None
    os.kill(dm.pid, signal.SIGHUP)
    dm.wait_for_log('"sighup"')
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1)
    assert dm.running


def test_damaged_outbox_refuses_to_start_with_instructions(
    tmp_path: Path, daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A damaged outbox file stops startup with exit code 3 and says what to do."""
    state = tmp_path / "state-corrupt"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"\x00garbage" * 4096)
    dm = daemon(daemon_config(state_dir=state), start=False)
    result = dm.cli("run")
    assert result.returncode == 3
    assert "move the file aside" in result.stderr
    assert (state / "outbox.db").read_bytes().startswith(b"\x00garbage")  # left for forensics
