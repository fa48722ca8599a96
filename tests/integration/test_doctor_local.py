"""`faultmail doctor`'s checks of the gateway itself: the outbox database in each state, a
state directory that cannot be written or created, secret files readable by others."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.doctor import Status
from agent.outbox import SCHEMA_VERSION, Outbox
from tests.conftest import Credentials
from tests.harness.dns import DnsServer
from tests.integration.conftest import SettingsFactory, by_name, run

pytestmark = pytest.mark.integration


def test_database_states(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """The outbox: absent is OK (created at start), healthy reports the schema, garbage and a
    newer schema are FAIL with the fix."""
    state = tmp_path / "state"
    settings = settings_for(state_dir=state)
    checks = by_name(run(settings, dns_server))
    assert (
        checks["database"].status is Status.OK and "does not exist yet" in checks["database"].detail
    )
    assert checks["state dir"].status is Status.OK

    Outbox(state / "outbox.db").close()
    db = by_name(run(settings, dns_server))["database"]
    assert db.status is Status.OK
    assert (
        f"integrity ok, schema {SCHEMA_VERSION}" in db.detail and "0 mail(s) pending" in db.detail
    )

    with sqlite3.connect(state / "outbox.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    newer = by_name(run(settings, dns_server))["database"]
    assert newer.status is Status.FAIL and "upgrade faultmail" in newer.fix

    for suffix in ("", "-wal", "-shm"):
        (state / f"outbox.db{suffix}").unlink(missing_ok=True)
    (state / "outbox.db").write_bytes(b"this is not a database, just bytes\n" * 200)
    broken = by_name(run(settings, dns_server))["database"]
    assert broken.status is Status.FAIL and "cannot be read as an SQLite database" in broken.detail
    assert "outbox.db.damaged" in broken.fix


def test_state_dir_not_writable(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A state directory this user cannot write to is a FAIL whose fix is a chown."""
    state = tmp_path / "readonly-state"
    state.mkdir()
    # Root writes through mode bits; a read-only mount stops root too (CI runs as root).
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=True
        )
    else:
        state.chmod(0o500)
    try:
        check = by_name(run(settings_for(state_dir=state), dns_server))["state dir"]
    finally:
        if as_root:
            subprocess.run(["umount", str(state)], check=True)
        else:
            state.chmod(0o700)
    assert check.status is Status.FAIL and check.fix.startswith("chown ")


def test_state_dir_under_a_file(
    settings_for: SettingsFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A state directory that cannot exist (a file is in the way) is a FAIL naming the key."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    check = by_name(run(settings_for(state_dir=blocker / "state"), dns_server))["state dir"]
    assert check.status is Status.FAIL and f"{blocker} is a file" in check.detail
    assert "gateway.state_dir" in check.fix


def test_secret_readable_by_others_is_a_config_warning(
    settings_for: SettingsFactory, dns_server: DnsServer, relay_credentials: Credentials
) -> None:
    """A password file others can read is a WARN whose fix is the chmod."""
    relay_credentials.password_file.chmod(0o644)
    check = by_name(run(settings_for(), dns_server))["config"]
    assert check.status is Status.WARN and "readable by everyone" in check.detail
    assert check.fix == f"chmod 600 {relay_credentials.password_file}"
