"""Nothing is lost through kill -9 or a broker restart: ack after commit, persistent sessions,
a fixed Message-ID for the rare duplicate."""

from __future__ import annotations

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, fault

pytestmark = pytest.mark.integration

FAILPOINTS = "FAULTMAIL_FAILPOINTS"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_kill_before_commit_broker_redelivers(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    protocol: str,
) -> None:
    """SIGKILL between receipt and commit: nothing was acked, so the broker redelivers it."""
    dm = daemon(
        daemon_config(mqtt={"protocol": protocol}), env={FAILPOINTS: "after_receive_before_commit"}
    )
    publish_many(mosquitto, [fault("p1", 1)])
    assert dm.wait(timeout=15) == -9
    assert dm.alerts() == []  # it really died before the commit
    del dm.env[FAILPOINTS]
    dm.start()
    (mail,) = relay.wait_for(1, timeout=20)
    (alert,) = dm.wait_for_alerts(all_settled(1))
    assert alert["state"] == "sent" and alert["seq"] == 1
    assert alert["message_id"] == mail.message_id


def test_kill_after_commit_before_ack_makes_no_second_mail(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """SIGKILL after commit but before PUBACK: the redelivery is recognised, one mail only."""
    dm = daemon(env={FAILPOINTS: "after_commit_before_ack"})
    publish_many(mosquitto, [fault("p1", 1)])
    assert dm.wait(timeout=15) == -9
    assert [a["seq"] for a in dm.alerts()] == [1]  # committed, not acked
    del dm.env[FAILPOINTS]
    dm.start()
    dm.wait_for_log('"duplicates_ignored"', timeout=15)
    relay.wait_for(1, timeout=20)
    (alert,) = dm.wait_for_alerts(all_settled(1))
    assert alert["state"] == "sent"
    publish_many(mosquitto, [fault("p1", 2)])  # a later message still flows
    relay.wait_for(2, timeout=20)
    assert len(relay.mails) == 2


def test_kill_after_250_duplicate_has_same_message_id(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """SIGKILL after the relay's 250 but before marking sent: at most one duplicate, same id."""
    dm = daemon(env={FAILPOINTS: "after_250_before_mark_sent"})
    publish_many(mosquitto, [fault("p1", 1)])
    assert dm.wait(timeout=15) == -9
    (first,) = relay.wait_for(1)
    del dm.env[FAILPOINTS]
    dm.start()
    second = relay.wait_for(2, timeout=20)[1]
    (alert,) = dm.wait_for_alerts(all_settled(1))
    assert first.message_id == second.message_id == alert["message_id"]
    assert alert["state"] == "sent"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_alerts_published_while_daemon_is_down_arrive_after_restart(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    protocol: str,
) -> None:
    """The persistent session keeps QoS 1 alerts at the broker while the daemon is dead."""
    dm = daemon(daemon_config(mqtt={"protocol": protocol}))
    dm.kill()
    publish_many(mosquitto, [fault(f"p{i}", 1) for i in range(5)])
    dm.start()
    relay.wait_for(5, timeout=20)
    alerts = dm.wait_for_alerts(all_settled(5))
    assert sorted(a["uid"] for a in alerts) == [f"p{i}" for i in range(5)]
    assert len({m.message_id for m in relay.mails}) == 5


def test_broker_restart_keeps_session_and_queue(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Broker restarted (SIGTERM, persistence on) while the daemon is away and back: all arrive."""
    dm = daemon()
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1)
    dm.kill()
    publish_many(mosquitto, [fault("p1", 2), fault("p1", 3)])
    mosquitto.restart()
    dm.start()
    relay.wait_for(3, timeout=20)
    publish_many(mosquitto, [fault("p1", 4)])
    relay.wait_for(4, timeout=20)
    alerts = dm.wait_for_alerts(all_settled(4))
    assert sorted(a["seq"] for a in alerts) == [1, 2, 3, 4]


def test_broker_restart_under_running_daemon_reconnects(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """The daemon reconnects by itself after the broker comes back and keeps ingesting."""
    dm = daemon()
    mosquitto.restart()
    dm.wait_for_log('"mqtt_disconnected"', timeout=10)
    publish_many(mosquitto, [fault("p1", 1)])
    relay.wait_for(1, timeout=30)
    assert dm.wait_for_alerts(all_settled(1))[0]["state"] == "sent"


def test_pending_alerts_survive_kill_while_relay_is_down(
    daemon: DaemonFactory, mosquitto: Mosquitto, relay: Relay
) -> None:
    """Alerts already committed but not yet mailed survive SIGKILL and go out after restart."""
    relay.stop()
    dm = daemon()
    publish_many(mosquitto, [fault("p1", i) for i in range(1, 4)])
    dm.wait_for_alerts(lambda a: len(a) == 3)
    dm.kill()
    relay.start()
    dm.start()
    relay.wait_for(3, timeout=20)
    alerts = dm.wait_for_alerts(all_settled(3))
    assert {a["message_id"] for a in alerts} == {m.message_id for m in relay.mails}
