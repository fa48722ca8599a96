"""A wall-clock step backwards while the daemon runs (NTP correcting a gateway that booted
without an RTC) must not silence anyone (issue #12, item 5).

The daemon runs under libfaketime (Debian package `faketime`), which offsets what the wall
clock says by the content of a file, re-read on every call; the monotonic clock is left alone,
as the kernel leaves it when NTP steps the time.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import fault

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _set_offset(path: Path, offset: str) -> None:
    """Replace the offset atomically: libfaketime must never read a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    os.replace(tmp, path)


def test_wall_clock_step_back_does_not_suppress_alerts(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    tmp_path: Path,
) -> None:
    """After the wall clock steps back an hour, the same device's next alerts are mailed, not
    rate-limited: the flood guard's buckets run on the monotonic clock."""
    assert LIBFAKETIME.exists(), "install the Debian package faketime (apt-get install faketime)"
    offset = tmp_path / "faketime-offset"
    _set_offset(offset, "+0")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    # A realistic limit: 5 at once, then one a second per device.
    dm = daemon(daemon_config(flood={"rate": 1.0, "burst": 5, "block_threshold": 1000}), env=env)
    publish_many(mosquitto, [fault("pump-1", 1)])
    relay.wait_for(1, timeout=20)

    _set_offset(offset, "-1h")
    publish_many(mosquitto, [fault("pump-1", 2), fault("pump-1", 3)])
    mails = relay.wait_for(3, timeout=20)
    assert sorted(m.subject for m in mails) == [
        f"[CRITICAL] pump-1 E042: Overpressure #{seq}" for seq in (1, 2, 3)
    ]
    alerts = {a["seq"]: a for a in dm.alerts()}
    assert [alerts[seq]["state"] for seq in (1, 2, 3)] == ["sent"] * 3
    # The step really reached the daemon: its stamps went back by about an hour.
    first, second = (datetime.fromisoformat(alerts[s]["received_at"]) for s in (1, 2))
    assert (first - second).total_seconds() > 3000
    result = dm.cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    (device,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert (device["uid"], device["received"], device["suppressed"]) == ("pump-1", 3, 0)
    assert dm.running
