"""Evading the flood guard with the real daemon (issue 14, items 7 and 8): a device that rotates
fault codes under the block threshold, and a sweep over many distinct UIDs."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAULT_TOPIC, DaemonConfigFactory, DaemonFactory
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import all_settled, eventually, fault

pytestmark = pytest.mark.integration

ROGUE_MESSAGES = 60  # at 4 a second: 15 s, under the block threshold (300 in 60 s)
BUDGET, WINDOW, CAP = 3, 10.0, 15


def _devices(dm: Any) -> dict[str, dict[str, Any]]:
    result = dm.cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    return {row["uid"]: row for row in map(json.loads, result.stdout.splitlines())}


def _mail_times(db: Path, uid: str) -> list[float]:
    """created_at of every mail carrying an alert of `uid`, read from the outbox itself."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT m.id, m.created_at FROM mails m JOIN alerts a ON a.mail_id = m.id "
            "WHERE a.uid = ? ORDER BY m.created_at",
            (uid,),
        ).fetchall()
    return [float(created) for _, created in rows]


def test_code_rotation_gets_a_budget_a_notice_and_leaves_the_cap_to_others(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
    tmp_path: Path,
) -> None:
    """A rogue with a new code per message at 4/s: at most its budget of mails per window
    (singles and digests), one code-rotation notice, every message accounted for, and a
    normal device's alerts go out among the first mails under the per-minute cap."""
    config = daemon_config(
        flood={
            "rate": 1.0,
            "burst": 30,
            "block_threshold": 300,
            "block_window": 60.0,
            "notify": ["security@example.com"],
        },
        mail={
            "repeat_window": 600,
            "device_budget": BUDGET,
            "device_window": WINDOW,
            "rotation_codes": 10,
        },
        delivery={"max_mails_per_minute": CAP, "retry_initial": 0.5, "retry_max": 5.0},
    )
    dm = daemon(config)
    normal_codes = {8: "E100", 28: "E200", 48: "E300"}
    for i in range(ROGUE_MESSAGES):
        batch = [fault("rogue-1", i, code=f"R{i:04d}", severity="warning")]
        if i in normal_codes:
            batch.append(fault("pump-1", i, code=normal_codes[i], severity="error"))
        publish_many(mosquitto, batch)
        time.sleep(0.25)

    def rogue_row() -> dict[str, Any] | None:
        row = _devices(dm).get("rogue-1")
        return row if row and row["received"] == ROGUE_MESSAGES else None

    row = eventually(rogue_row, timeout=30, what="every rogue message counted")
    stored = [a for a in dm.alerts() if a["uid"] == "rogue-1"]
    # Every message is accounted for: stored as an alert or counted by the rate limit.
    assert len(stored) + row["suppressed"] + row["dropped"] == ROGUE_MESSAGES
    assert row["state"] == "ok" and row["suspicious"] >= 1
    total = len(dm.alerts())
    eventually(
        lambda: all_settled(total)(dm.alerts()), timeout=3 * WINDOW + 30, what="all alerts sent"
    )
    assert all(a["state"] == "sent" for a in dm.alerts())

    mails = relay.mails
    kinds = [(m.message["X-Faultmail-Kind"], m.message.get("X-Faultmail-Device")) for m in mails]
    normal = [n for n, (_, device) in enumerate(kinds) if device == "pump-1"]
    assert len(normal) == 3
    # Promptly: each normal alert went out while the first minute's slots lasted.
    assert max(normal) < CAP, kinds
    # The rogue: never more than its budget of mails within any device window.
    times = _mail_times(tmp_path / "state" / "outbox.db", "rogue-1")
    for t in times:
        assert sum(t - WINDOW < u <= t for u in times) <= BUDGET, times
    rogue_singles = [k for k, d in kinds if d == "rogue-1" and k == "alert"]
    assert 0 < len(rogue_singles) <= BUDGET * 3
    notices = [m for m in mails if m.message["X-Faultmail-Kind"] == "security-notice"]
    assert len(notices) == 1 and list(notices[0].rcpt_tos) == ["security@example.com"]
    body = notices[0].message.get_body(("plain",))
    assert body is not None and "code rotation" in body.get_content()
    subject = notices[0].subject
    assert "code rotation" in subject and subject.endswith("not blocked"), subject
    assert not any(k == "block-notice" for k, _ in kinds)


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_sweep_over_20000_uids_leaves_memory_bounded(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """20,000 distinct UIDs, one message each, never idle: peak RSS grows by less than 16 MiB
    (it grew by 32 MiB before the bound) and the next real alert is mailed."""
    config = daemon_config(
        # burst / rate (500 s) far beyond the window: the case that used to keep every UID.
        flood={
            "rate": 0.01,
            "burst": 5,
            "block_window": 3600.0,
            "samples": 10,
            "max_devices": 1000,
        },
        routes=[{"topics": [FAULT_TOPIC], "min_severity": "warning", "to": ["ops@example.com"]}],
    )
    dm = daemon(config)
    publish_many(mosquitto, [fault("warm-up", 1, severity="warning")])
    relay.wait_for(1, timeout=20)
    pid = dm.pid
    assert pid is not None
    before = _rss_kib(pid, "VmRSS")
    # Info: no route wants it, so each is stored as suppressed and mailed to nobody; the long
    # message fills the notice samples the guard keeps per UID.
    sweep = [fault(f"sweep-{i:05d}", 1, severity="info", message="x" * 400) for i in range(20_000)]
    publish_many(mosquitto, sweep, timeout=120)
    eventually(lambda: len(dm.alerts()) == 20_001, timeout=120, what="the sweep stored")
    publish_many(mosquitto, [fault("pump-1", 2, severity="critical")])
    mails = relay.wait_for(2, timeout=20)
    assert mails[-1].message["X-Faultmail-Device"] == "pump-1"
    grown_mib = (_rss_kib(pid, "VmHWM") - before) / 1024
    print(f"\nsweep: 20,000 UIDs, peak RSS growth {grown_mib:.1f} MiB")
    assert grown_mib < 16, f"peak RSS grew by {grown_mib:.1f} MiB"
