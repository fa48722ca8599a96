"""The relay misbehaves (down, 4xx, 5xx for one recipient, connection lost mid-DATA, slow or
reset network): every alert still reaches the relay, at most duplicated with its Message-ID."""

from __future__ import annotations

import time

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.faults.conftest import Accountant, ProxyFactory
from tests.faults.load import DevicePublisher, faults, key_of
from tests.faults.proxy import DIRECTIONS, FaultProxy
from tests.faults.support import FAST_DELIVERY, outcomes, settle
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import audit, eventually, fault

pytestmark = pytest.mark.integration


def _sent_attempts(dm: Daemon) -> list[dict[str, object]]:
    return [r for r in audit(dm) if r["event"] == "send_attempt"]


def test_relay_down_for_a_while_then_back(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """80 alerts while the relay is down stay pending, then all go out once, when it is back."""
    relay.stop()
    dm = daemon(daemon_config(delivery=FAST_DELIVERY))
    messages = faults(80, devices=8)
    publish_many(mosquitto, messages)
    eventually(
        lambda: "retry:connect" in outcomes(_sent_attempts(dm)), what="a failed connect attempt"
    )
    pending = dm.wait_for_alerts(lambda a: len(a) == 80, timeout=20)
    assert {a["state"] for a in pending} == {"pending"}
    time.sleep(1.5)  # a few probes find it still down
    relay.start()
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(published, alerts, relay.mails, notes="relay down ~3 s")
    assert figures.lost == 0 and figures.delivered == 80 and figures.duplicated == 0


def test_relay_answers_451_a_few_times_then_250(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """451 to DATA three times: those mails are retried (audited as retry:smtp 451), none lost."""
    relay.fail_data(3, code=451)
    dm = daemon(daemon_config(delivery=FAST_DELIVERY))
    messages = faults(20, devices=4)
    publish_many(mosquitto, messages)
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(published, alerts, relay.mails, notes="3 x 451")
    assert figures.lost == 0 and figures.delivered == 20 and figures.duplicated == 0
    retries = [r for r in _sent_attempts(dm) if r["outcome"] == "retry:smtp"]
    assert [r["smtp_code"] for r in retries] == [451, 451, 451]
    assert [a.outcome for a in relay.attempts].count("failed") == 3
    # Each refused attempt carried the Message-ID its mail finally went out with.
    delivered_ids = {m.message_id for m in relay.mails}
    assert {a.message_id for a in relay.attempts if a.outcome == "failed"} <= delivered_ids


def test_relay_refuses_one_of_two_recipients_with_550(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """550 for one recipient: the other gets every alert, and each refusal is in the audit."""
    relay.reject_rcpt("gone@example.com", code=550)
    config = daemon_config(
        delivery=FAST_DELIVERY,
        routes=[
            {
                "topics": ["devices/+/fault"],
                "min_severity": "info",
                "to": ["ops@example.com", "gone@example.com"],
            }
        ],
    )
    dm = daemon(config)
    messages = faults(20, devices=4)
    publish_many(mosquitto, messages)
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(published, alerts, relay.mails, notes="gone@ refused 550")
    assert figures.lost == 0 and figures.delivered == 20 and figures.duplicated == 0
    assert {m.rcpt_tos for m in relay.mails} == {("ops@example.com",)}
    sent = [r for r in _sent_attempts(dm) if r["outcome"] == "sent"]
    assert len(sent) == figures.mails  # one audited refusal per mail (a digest is one mail)
    assert all("gone@example.com 550" in str(r["detail"]) for r in sent)


@pytest.mark.parametrize("store", [False, True], ids=["not-stored", "stored"])
def test_relay_drops_connection_mid_data(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
    store: bool,
) -> None:
    """The relay reads DATA and hangs up without a reply: retried; a copy it kept is a duplicate
    with the same Message-ID, never a second Message-ID."""
    relay.drop_mid_data(3, store=store)
    dm = daemon(daemon_config(delivery=FAST_DELIVERY))
    messages = faults(12, devices=3)
    publish_many(mosquitto, messages)
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(published, alerts, relay.mails, notes=f"3 drops after DATA, store={store}")
    assert figures.lost == 0 and figures.delivered == 12
    assert len(relay.dropped) == 3
    if store:
        assert figures.duplicate_mails <= 3
    else:
        assert figures.duplicated == 0
    retried = [r for r in _sent_attempts(dm) if str(r["outcome"]).startswith("retry:")]
    assert len(retried) >= 3


def _warm_transaction_bytes(
    dm: Daemon, mosquitto: Mosquitto, relay: Relay, relay_proxy: FaultProxy, seq: int
) -> tuple[int, int]:
    """Mail one alert through the proxy; the bytes that took each way."""
    before = [relay_proxy.forwarded(d) for d in DIRECTIONS]
    count = len(relay.mails)
    publish_many(mosquitto, faults(1, devices=1, prefix="warm", start=seq))
    relay.wait_for(count + 1, timeout=20)
    dm.wait_for_alerts(lambda a: all(r["state"] != "pending" for r in a), timeout=20)
    c2s, s2c = (relay_proxy.forwarded(d) - b for d, b in zip(DIRECTIONS, before, strict=True))
    return c2s, s2c


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
def test_connection_cut_in_data_phase_through_proxy(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    proxy: ProxyFactory,
    account: Accountant,
    direction: str,
) -> None:
    """The TCP connection to the relay dies inside the DATA phase: while the message is on its
    way (the relay has nothing: retried, one copy) or after the relay's 250 left (the relay has
    it: the retry is a duplicate with the same Message-ID)."""
    relay_proxy = proxy(relay, name="relay")
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, smtp={"port": relay_proxy.port}))
    _warm_transaction_bytes(dm, mosquitto, relay, relay_proxy, 1)  # connect, STARTTLS, AUTH
    c2s, s2c = _warm_transaction_bytes(dm, mosquitto, relay, relay_proxy, 2)
    connections = relay_proxy.connections
    if direction == "client_to_server":
        # MAIL, RCPT and DATA are ~150 bytes of TLS records; the message (well over 1 KiB)
        # and the final dot follow: stop 200 bytes before the end of the transaction.
        assert c2s > 800, c2s
        relay_proxy.cut_after(c2s - 200, "client_to_server")
    else:
        # The relay's last record is the 250 to the final dot: cut inside it.
        relay_proxy.cut_after(s2c - 20, "server_to_client")
    cut_message = faults(1, devices=1, prefix="cut", start=1)
    publish_many(mosquitto, cut_message)
    eventually(lambda: relay_proxy.cuts == 1, timeout=20, what="the cut")
    later = faults(5, devices=1, prefix="after", start=1)
    publish_many(mosquitto, later)
    published = [key_of(m) for m in [*cut_message, *later]]
    warm = [("warm00", 1), ("warm00", 2)]
    alerts = settle(dm, relay, [*warm, *published], timeout=60)
    figures = account(
        [*warm, *published], alerts, relay.mails, notes=f"cut {direction} in DATA phase"
    )
    assert figures.lost == 0 and figures.delivered == len(published) + 2
    assert relay_proxy.connections > connections  # the daemon had to reconnect
    retries = [r for r in _sent_attempts(dm) if str(r["outcome"]).startswith("retry:")]
    assert len(retries) == 1 and str(retries[0]["detail"]).startswith("data:"), retries
    if direction == "client_to_server":
        assert figures.duplicated == 0  # the relay never had the whole message
    else:
        assert figures.duplicate_mails == 1  # it had: the retry is a recognisable duplicate


def test_relay_behind_latency(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    proxy: ProxyFactory,
    account: Accountant,
) -> None:
    """0.1 s each way to the relay (0.2 s round trips): slower, nothing lost or doubled."""
    relay_proxy = proxy(relay, name="relay")
    relay_proxy.latency(0.1)
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, smtp={"port": relay_proxy.port}))
    messages = faults(8, devices=2)
    started = time.monotonic()
    publish_many(mosquitto, messages)
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    took = time.monotonic() - started
    figures = account(published, alerts, relay.mails, notes=f"0.2 s round trips, {took:.1f} s")
    assert figures.lost == 0 and figures.delivered == 8 and figures.duplicated == 0
    assert took > 2.0  # the latency was really there
    assert not [r for r in _sent_attempts(dm) if str(r["outcome"]).startswith("retry:")]


def test_relay_connections_reset_under_load(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    proxy: ProxyFactory,
    account: Accountant,
) -> None:
    """Live relay connections reset (RST) twice while alerts stream in: all delivered, any
    duplicate carries the alert's one Message-ID."""
    relay_proxy = proxy(relay, name="relay")
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, smtp={"port": relay_proxy.port}))
    messages = faults(60, devices=6)
    with DevicePublisher(mosquitto, messages, rate=30) as publisher:
        for _ in range(2):
            eventually(lambda: relay_proxy.active > 0, timeout=10, what="a relay connection")
            time.sleep(0.3)
            relay_proxy.reset()
            time.sleep(0.4)
            relay_proxy.pass_()
        assert publisher.wait(30), publisher.summary()
    published = publisher.published
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(
        published, alerts, relay.mails, notes=f"2 resets, {relay_proxy.resets} connections reset"
    )
    assert figures.lost == 0 and figures.delivered == 60
    assert relay_proxy.resets >= 1


def test_alerts_arriving_during_an_outage_do_not_make_the_daemon_probe_the_relay_faster(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """While the relay refuses service, it is probed every delivery.probe_interval, however
    fast alerts arrive meanwhile: an outage with devices reporting must not become a stream of
    connections to the relay at the alert rate. Every alert still goes out once it is back."""
    # Each connection is greeted with 421 (a relay shutting down): a connect failure that
    # pauses the queue. A probe connects, so it reopens the queue for one pass whose lanes'
    # attempts are refused again: 1 + smtp.connections connections per probe interval.
    relay.reply_at("greeting", b"421 4.3.2 Service shutting down", count=100_000)
    probe_interval, lanes = 1.0, 2
    delivery = {"retry_initial": 60.0, "retry_max": 300.0, "probe_interval": probe_interval}
    dm = daemon(daemon_config(delivery=delivery, smtp={"connections": lanes}))
    messages = faults(121, devices=6)
    publish_many(mosquitto, messages[:1])
    eventually(
        lambda: "retry:connect" in outcomes(_sent_attempts(dm)), what="a refused first attempt"
    )
    before, started = relay.connections, time.monotonic()
    # 30 alerts/s, each its own intake batch: each one used to wake the loop into a probe.
    with DevicePublisher(mosquitto, messages[1:], rate=30) as publisher:
        assert publisher.wait(30), publisher.summary()
    dm.wait_for_alerts(lambda a: len(a) == len(messages), timeout=20)
    window = time.monotonic() - started
    made = relay.connections - before
    allowed = (1 + lanes) * (window / probe_interval + 2)
    assert made <= allowed, (
        f"{made} connections to the relay in {window:.1f} s of outage with probe_interval "
        f"{probe_interval} s (at most {allowed:.0f} expected)"
    )
    relay.clear_faults()
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(
        published, alerts, relay.mails, notes=f"421 outage, {made} connections in {window:.1f} s"
    )
    assert figures.lost == 0 and figures.delivered == len(messages)


def test_a_slow_reply_on_one_connection_does_not_hold_a_critical_alert(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """The relay takes 15 s to answer one mail's end of DATA (a content scanner; data_timeout
    allows 120 s). A critical alert from another device that arrives meanwhile goes out on the
    second connection within seconds, not after that reply. Both are delivered once."""
    relay.slow_data(1, 15.0)
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, smtp={"connections": 2}))
    messages = [fault("slow-01", 1, severity="error", code="E100")]
    publish_many(mosquitto, messages)
    eventually(lambda: len(relay.mails) == 1, timeout=10, what="the first mail, its 250 held")
    messages.append(fault("boiler-02", 1, severity="critical", code="E900"))
    held_since = time.monotonic()
    publish_many(mosquitto, messages[1:])
    eventually(lambda: len(relay.mails) == 2, timeout=8, what="the critical mail at the relay")
    waited = time.monotonic() - held_since
    assert relay.mails[1].subject.count("boiler-02") == 1, relay.mails[1].subject
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=60)
    figures = account(
        published, alerts, relay.mails, notes=f"one 250 held 15 s; critical after {waited:.1f} s"
    )
    assert figures.lost == 0 and figures.delivered == 2 and figures.duplicated == 0
