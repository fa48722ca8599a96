"""The metrics textfile against a local user who can write its directory, with the real daemon:
what they plant there is never written through, and node_exporter can read the file."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import eventually, fault

pytestmark = pytest.mark.integration

# How many pids after the daemon's own get a link too (for the restart, whose pid is near).
NEXT_PIDS = 200


def plant(textdir: Path, name: str, pids: range, target: Path) -> list[Path]:
    """Symlinks at `.NAME.<pid>.tmp`, the name the writer used to pick, for each pid."""
    links = []
    for pid in pids:
        link = textdir / f".{name}.{pid}.tmp"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
            links.append(link)
    return links


def reports_after(dm: Daemon, seen: int, count: int) -> None:
    """Wait until the daemon has sent `count` more STATUS= lines (one per health report)."""
    eventually(
        lambda: len([n for n in dm.notifications[seen:] if n.startswith("STATUS=")]) >= count,
        timeout=30,
        what=f"{count} health reports",
    )


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_symlinks_planted_in_the_textfile_directory_are_not_written_through(
    tmp_path: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """Links at every predictable temporary name (the daemon's pid and the next ones, before and
    across a restart) to the outbox's WAL and to another file change neither; alerts are still
    stored and mailed, the outbox stays intact, and the textfile is a regular 0644 file under
    the unit's UMask=0077."""
    textdir = tmp_path / "node-exporter"
    textdir.mkdir()
    prom = textdir / "faultmail.prom"
    state = tmp_path / "state"
    wal = state / "outbox.db-wal"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    config = daemon_config(
        state_dir=state, extra={"health": {"interval": 1.0, "metrics_textfile": str(prom)}}
    )
    previous = os.umask(0o077)  # the unit's UMask=; the daemon inherits it
    try:
        dm = daemon(config)
    finally:
        os.umask(previous)
    assert dm.pid is not None and wal.exists()
    seen = len(dm.notifications)
    plant(textdir, prom.name, range(dm.pid, dm.pid + 1), wal)
    plant(textdir, prom.name, range(dm.pid + 1, dm.pid + NEXT_PIDS), victim)
    reports_after(dm, seen, 3)
    publish_many(mosquitto, [fault("pump-1", 1)])
    relay.wait_for(1, timeout=20)
    assert dm.running, dm.log_tail()
    assert not wal.read_bytes().startswith(b"# HELP")

    dm.kill()
    previous = os.umask(0o077)
    try:
        dm.start()
    finally:
        os.umask(previous)
    assert dm.pid is not None
    seen = len(dm.notifications)
    plant(textdir, prom.name, range(dm.pid, dm.pid + 1), victim)
    reports_after(dm, seen, 3)
    publish_many(mosquitto, [fault("pump-1", 2)])
    relay.wait_for(2, timeout=20)
    assert dm.running, dm.log_tail()
    assert victim.read_bytes() == b"precious\n"
    assert not prom.is_symlink() and prom.read_text().startswith("# HELP faultmail_")
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert {a["seq"] for a in dm.alerts()} == {1, 2}
    dm.terminate()
    assert integrity(state / "outbox.db") == "ok"
