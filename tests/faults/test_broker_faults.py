"""The broker side fails (a silent network longer than the keepalive, connection resets,
broker restarts) while devices keep publishing: the persistent session and ack-after-commit
keep every alert."""

from __future__ import annotations

import time

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.faults.conftest import Accountant, ProxyFactory
from tests.faults.load import DevicePublisher, faults, key_of
from tests.faults.support import FAST_DELIVERY, settle
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import eventually

pytestmark = pytest.mark.integration

KEEPALIVE = 5


def _count_events(dm: Daemon, event: str) -> int:
    return sum(1 for r in dm.log_records() if r.get("event") == event)


def test_broker_blackholed_longer_than_keepalive(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    proxy: ProxyFactory,
    account: Accountant,
) -> None:
    """The path to the broker goes silent for longer than the keepalive (5 s): the daemon
    notices, reconnects once the path is back and gets everything published meanwhile."""
    broker_proxy = proxy(mosquitto, name="broker")
    config = daemon_config(
        delivery=FAST_DELIVERY, mqtt={"port": broker_proxy.port, "keepalive": KEEPALIVE}
    )
    dm = daemon(config)
    before = faults(10, devices=2, prefix="before")
    publish_many(mosquitto, before)
    relay.wait_for(10, timeout=20)
    connected = _count_events(dm, "mqtt_connected")

    broker_proxy.blackhole()
    started = time.monotonic()
    during = faults(20, devices=2, prefix="during")
    publish_many(mosquitto, during)  # the broker sends them into the hole
    dm.wait_for_log('"mqtt_disconnected"', timeout=3 * KEEPALIVE)
    # Stay dark past the broker's own limit (1.5 x keepalive) too.
    time.sleep(max(0.0, 2 * KEEPALIVE - (time.monotonic() - started)))
    assert len(relay.mails) == 10
    broker_proxy.pass_()
    dark = time.monotonic() - started

    after = faults(10, devices=2, prefix="after")
    publish_many(mosquitto, after)
    published = [key_of(m) for m in [*before, *during, *after]]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(published, alerts, relay.mails, notes=f"blackhole {dark:.1f} s")
    assert figures.lost == 0 and figures.delivered == 40 and figures.duplicated == 0
    assert _count_events(dm, "mqtt_connected") > connected
    assert dm.running


def test_broker_connection_reset_under_load(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    proxy: ProxyFactory,
    account: Accountant,
) -> None:
    """The daemon's broker connection is reset (RST) twice while alerts stream in: it
    reconnects to its session and nothing is lost or mailed twice."""
    broker_proxy = proxy(mosquitto, name="broker")
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, mqtt={"port": broker_proxy.port}))
    messages = faults(200, devices=8)
    with DevicePublisher(mosquitto, messages, rate=50) as publisher:
        for _ in range(2):
            time.sleep(1.0)
            eventually(lambda: broker_proxy.active > 0, timeout=10, what="a broker connection")
            broker_proxy.reset()
            time.sleep(0.3)
            broker_proxy.pass_()
        assert publisher.wait(30), publisher.summary()
    published = publisher.published
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(
        published, alerts, relay.mails, notes=f"2 resets; {broker_proxy.connections} connections"
    )
    assert figures.lost == 0 and figures.delivered == 200 and figures.duplicated == 0
    assert broker_proxy.connections >= 3
    assert _count_events(dm, "mqtt_disconnected") >= 2


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_restarted_twice_under_load(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
    protocol: str,
) -> None:
    """Mosquitto (persistence on) restarted with SIGTERM twice while devices publish: the
    daemon's session and queue survive, devices republish what was not acked, no loss."""
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, mqtt={"protocol": protocol}))
    messages = faults(300, devices=10)
    with DevicePublisher(mosquitto, messages, rate=40) as publisher:
        for _ in range(2):
            time.sleep(2.0)
            mosquitto.restart()
        assert publisher.wait(40), publisher.summary()
    published = publisher.published
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(
        published,
        alerts,
        relay.mails,
        notes=f"MQTT {protocol}, 2 SIGTERM restarts, {publisher.republished} republished",
    )
    assert figures.lost == 0 and figures.delivered == 300 and figures.duplicated == 0
    assert publisher.connects >= 3
    assert _count_events(dm, "mqtt_connected") >= 3
