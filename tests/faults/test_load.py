"""The load tools themselves: the device-like publisher is at-least-once across connection
losses (against a real broker, through the fault proxy; no daemon)."""

from __future__ import annotations

import queue
import time

import pytest

from tests.faults.conftest import ProxyFactory
from tests.faults.load import DevicePublisher, faults, key_of
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import Subscriber
from tests.integration.support import eventually

pytestmark = pytest.mark.integration


def test_device_publisher_republishes_what_was_not_acked(
    mosquitto: Mosquitto, proxy: ProxyFactory
) -> None:
    """Messages sent into a dead connection (no PUBACK) are published again after the
    reconnect; the broker ends up with every message."""
    path = proxy(mosquitto, name="broker")
    messages = faults(20, devices=2)
    with Subscriber(mosquitto, ["devices/+/fault"]) as subscriber:
        publisher = DevicePublisher(path, messages, rate=20)
        with publisher:
            deadline = time.monotonic() + 10
            while publisher.connects == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            path.blackhole()
            eventually(lambda: publisher.sent == 20, timeout=10, what="all sent")
            assert publisher.acked < 20
            path.reset()  # the held bytes never reach the broker
            time.sleep(0.3)
            path.pass_()
            assert publisher.wait(20), publisher.summary()
        assert publisher.republished >= 1 and publisher.connects >= 2
        got = set()
        while True:
            try:
                received = subscriber.get(timeout=1)
            except queue.Empty:
                break
            got.add(key_of((received.topic, received.payload)))
    assert got == {key_of(m) for m in messages}
