"""The outbox's disk fills up during ingest: the daemon stops acknowledging, the broker keeps
the messages, and once there is space again everything is stored and mailed."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.faults.conftest import Accountant, remount
from tests.faults.load import DevicePublisher, faults, key_of
from tests.faults.support import FAST_DELIVERY, outcomes, settle
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import audit

pytestmark = pytest.mark.integration


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system that holds directory; the filler's path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 65536
        while size >= 1:
            try:
                os.write(fd, b"\0" * size)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_ingest_then_space_back(
    tmpfs: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """State dir on a 1 MiB tmpfs, relay down: ingest hits disk full and stops acking (the
    broker keeps the rest); with space back and the relay up, every alert is mailed once."""
    relay.stop()
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, state_dir=tmpfs))
    messages = faults(400, devices=10)
    with DevicePublisher(mosquitto, messages, rate=100) as publisher:
        dm.wait_for_log('"outbox_write_failed"', timeout=30)
        assert publisher.wait(30), publisher.summary()
    time.sleep(1.0)
    stored = len(dm.alerts())
    assert stored < len(messages), "the disk never filled up: nothing was held back"
    assert dm.running
    remount(tmpfs, "64m")
    relay.start()
    published = publisher.published
    alerts = settle(dm, relay, published, timeout=90)
    failures = sum(1 for r in dm.log_records() if r.get("event") == "outbox_write_failed")
    figures = account(
        published,
        alerts,
        relay.mails,
        notes=f"1 MiB full after {stored} stored; {failures} failed commits",
    )
    assert figures.lost == 0 and figures.delivered == len(messages) and figures.duplicated == 0


def test_sigterm_while_disk_full_loses_nothing(
    tmpfs: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """SIGTERM while ingest cannot commit: exit code 0 within 10 s, nothing acknowledged that
    was not stored; started again with space, every alert is mailed once."""
    relay.stop()
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, state_dir=tmpfs))
    messages = faults(200, devices=10)
    with DevicePublisher(mosquitto, messages, rate=100) as publisher:
        dm.wait_for_log('"outbox_write_failed"', timeout=30)
        assert publisher.wait(30), publisher.summary()
    code, seconds = dm.terminate(timeout=20)
    assert code == 0 and seconds < 10, dm.log_tail()
    remount(tmpfs, "64m")
    relay.start()
    dm.start()
    published = publisher.published
    alerts = settle(dm, relay, published, timeout=90)
    figures = account(published, alerts, relay.mails, notes=f"SIGTERM took {seconds:.1f} s")
    assert figures.lost == 0 and figures.delivered == len(messages) and figures.duplicated == 0


def test_relay_back_while_disk_full_then_space_back(
    tmpfs: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """The relay comes back while the outbox's disk is full, then space comes back: delivery
    resumes by itself (queued alerts and new ones are mailed)."""
    relay.stop()
    # A long backoff: only the relay probe (every 0.3 s) can end the pause.
    delivery = {**FAST_DELIVERY, "retry_initial": 30.0, "retry_max": 60.0}
    dm = daemon(daemon_config(delivery=delivery, state_dir=tmpfs))
    queued = faults(3, devices=3, prefix="queued")
    publish_many(mosquitto, queued)
    deadline = time.monotonic() + 20
    while "retry:connect" not in outcomes(audit(dm)) and time.monotonic() < deadline:
        time.sleep(0.2)
    filler = _fill(tmpfs)
    relay.start()
    time.sleep(2.0)  # a few probes: the relay answers, recording that needs the full disk
    filler.unlink()
    later = faults(3, devices=3, prefix="later")
    publish_many(mosquitto, later)
    published = [key_of(m) for m in [*queued, *later]]
    alerts = settle(dm, relay, published, timeout=10)
    figures = account(published, alerts, relay.mails, notes="relay back while disk full")
    assert figures.lost == 0 and figures.delivered == 6


def test_disk_full_between_250_and_mark_sent_makes_no_duplicate(
    tmpfs: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    account: Accountant,
) -> None:
    """The disk fills between the relay's 250 and the commit of "sent": like a crash there,
    only the write of "sent" is retried, so the mail reaches the relay exactly once."""
    dm = daemon(daemon_config(delivery=FAST_DELIVERY, state_dir=tmpfs))
    relay.slow_data(1, 2.0)  # stores the mail at once, answers 250 two seconds later
    messages = faults(1, devices=1)
    publish_many(mosquitto, messages)
    relay.wait_for(1, timeout=20)
    filler = _fill(tmpfs)
    time.sleep(4.0)
    filler.unlink()
    published = [key_of(m) for m in messages]
    alerts = settle(dm, relay, published, timeout=20)
    time.sleep(0.5)
    figures = account(
        published,
        alerts,
        relay.mails,
        notes="4 s of full disk after the 250",
    )
    assert figures.lost == 0 and figures.delivered == 1
    assert figures.duplicate_mails == 0 and len(relay.mails) == 1
    late = [r for r in dm.log_records() if r.get("event") == "sent_recorded_late"]
    assert late, "the disk never filled between the 250 and the commit: nothing was tested"
