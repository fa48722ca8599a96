"""Supervision with the real daemon: a stage that dies takes the process down, a stalled one
stops the watchdog and shows in `status`, a damaged outbox found at run time exits 3, and idle
connections to the metrics port cannot use up the daemon's file descriptors."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon, DaemonError
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import free_port
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, eventually, fault, states

pytestmark = pytest.mark.integration

FAILPOINTS = "FAULTMAIL_FAILPOINTS"
# Opens N idle connections to 127.0.0.1:PORT, prints how many it got, then holds them.
_CROWD = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(120)
"""


def _status(dm: Daemon) -> tuple[int, dict[str, Any]]:
    result = dm.cli("status", "--json")
    return result.returncode, json.loads(result.stdout)


def _start_or_died(dm: Daemon) -> None:
    """Start; a stage failpoint may end the process before READY=1 already."""
    with contextlib.suppress(DaemonError):
        dm.start()


@pytest.mark.parametrize("failpoint", ["intake_crash", "dispatch_crash"])
def test_a_stage_that_dies_takes_the_process_down_and_loses_nothing(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    failpoint: str,
) -> None:
    """A stage killed by an exception outside any unit of work ends the process with exit 1
    and the traceback in the log; restarted (as systemd's Restart=on-failure does), every
    alert is mailed."""
    dm = daemon(daemon_config(), env={FAILPOINTS: failpoint})
    publish_many(mosquitto, [fault(f"pump-{i % 2}", i) for i in range(10)])
    assert dm.wait(20) == 1, dm.log_tail()
    failed = [r for r in dm.log_records() if r.get("event") == "stage_failed"]
    stage = failpoint.split("_")[0]
    assert [r["stage"] for r in failed] == [stage], dm.log_tail()
    assert "FailpointError" in failed[0]["error"] and "Traceback" in dm.log_text()
    # The supervisor's restart, without the failpoint this time.
    dm.env.pop(FAILPOINTS)
    dm.start()
    alerts = dm.wait_for_alerts(all_settled(10), timeout=30)
    assert states(alerts) == {"sent": 10}
    mailed = {m.message_id for m in relay.mails}
    assert {a["message_id"] for a in alerts} <= mailed


def test_a_stalled_stage_withholds_the_watchdog_and_status_names_it(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """An intake thread stuck for good stops the WATCHDOG=1 pings within health.stall_after,
    `status` exits 1 naming the stalled stage, the metrics say stage_up 0; after the restart
    that the watchdog would cause, the alert it held is mailed."""
    port = free_port()
    config = daemon_config(
        extra={"health": {"stall_after": 10, "interval": 1, "metrics_port": port}}
    )
    dm = daemon(config, env={FAILPOINTS: "intake_stall", "WATCHDOG_USEC": "3000000"})
    assert dm.wait_for_notification("WATCHDOG=1", timeout=10)
    code, report = _status(dm)
    assert code == 0 and report["healthy"], report
    assert set(report["stages"]) == {"mqtt", "intake", "dispatch", "outbox", "health"}

    publish_many(mosquitto, [fault("pump-1", 1)])

    def stalled() -> dict[str, Any] | None:
        code, report = _status(dm)
        intake = report["stages"].get("intake", {})
        return report if code == 1 and intake.get("state") == "stalled" else None

    report = eventually(stalled, timeout=30, what="status to report intake stalled")
    assert report["running"] and not report["healthy"]
    assert report["stages"]["dispatch"]["state"] == "alive"
    dm.wait_for_log(r'"event": "watchdog_withheld"', timeout=10)
    pings = dm.notifications.count("WATCHDOG=1")
    time.sleep(4)
    assert dm.notifications.count("WATCHDOG=1") == pings, "watchdog still pinged while stalled"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    assert 'faultmail_stage_up{gateway="gw-test-01",stage="intake"} 0' in body
    assert 'faultmail_stage_up{gateway="gw-test-01",stage="dispatch"} 1' in body

    dm.kill()  # what systemd does when WatchdogSec passes without a ping
    dm.env.pop(FAILPOINTS)
    dm.start()
    relay.wait_for(1, timeout=20)
    assert states(dm.wait_for_alerts(all_settled(1))) == {"sent": 1}


def _corrupt(db: Path) -> None:
    """Overwrite every page but the first (the header and schema) with garbage, and the WAL."""
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * max(0, size - 4096))
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        with wal.open("r+b") as f:
            f.seek(32)
            f.write(b"\xa5" * max(0, wal.stat().st_size - 32))


def test_corruption_found_at_run_time_exits_3_with_the_recovery_steps(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    tmp_path: Path,
) -> None:
    """A damaged outbox noticed while running ends the daemon with exit 3 (systemd does not
    restart it: RestartPreventExitStatus) and a log line that says how to recover."""
    dm = daemon(daemon_config(extra={"health": {"interval": 1}}))
    publish_many(mosquitto, [fault("pump-1", 1)])
    relay.wait_for(1)
    dm.wait_for_alerts(all_settled(1))
    _corrupt(tmp_path / "state" / "outbox.db")
    publish_many(mosquitto, [fault("pump-2", 2)])
    assert dm.wait(30) == 3, dm.log_tail()
    failed = [r for r in dm.log_records() if r.get("event") == "stage_failed"]
    assert failed and "OutboxCorrupt" in failed[0]["error"], dm.log_tail()
    assert "move the file aside" in failed[0]["error"]


def test_idle_connections_to_the_metrics_port_cannot_starve_the_daemon(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """1,100 idle connections to the loopback metrics endpoint (more than the daemon's 1,024
    file descriptors) leave it with few descriptors open; the next alert is still mailed and
    every stage stays alive."""
    port = free_port()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The daemon inherits 1,024 descriptors, as a service gets by default.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        dm = daemon(daemon_config(extra={"health": {"interval": 1, "metrics_port": port}}))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pid = dm.pid
    assert pid is not None
    # The crowd lives in a process of its own: paho's select() in this one cannot take
    # descriptors above 1,024.
    crowd = subprocess.Popen(
        [sys.executable, "-c", _CROWD, str(port), "1100"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)),
    )
    try:
        assert crowd.stdout is not None
        opened = int(crowd.stdout.readline())
        assert opened >= 1050, opened
        # Connections the kernel queued are accepted and closed a batch per loop turn: on a
        # busy machine the count is high for a moment, so it need only come down.
        eventually(
            lambda: len(os.listdir(f"/proc/{pid}/fd")) < 200,
            what="the daemon to close the crowd's connections",
        )
        publish_many(mosquitto, [fault("pump-9", 1)])
        relay.wait_for(1, timeout=20)
        code, report = _status(dm)
        assert code == 0 and report["healthy"], report
    finally:
        crowd.kill()
        crowd.communicate()

    # A scraper gets its figures again once the crowd is gone: right after the kill the
    # daemon may still hold its last METRICS_MAX_CONNECTIONS of them (until it reads their
    # end), and turns a scraper away meanwhile, as it turned the crowd away.
    def scrape() -> str:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                return b"".join(iter(lambda: conn.recv(65536), b"")).decode()
        except OSError:
            return ""

    eventually(
        lambda: "faultmail_stage_up" in scrape(),
        timeout=10,
        what="a scrape answered once the crowd is gone",
    )
