"""doctor.local: the state directory and the outbox database lines."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.doctor.local import database_check, state_dir_check
from agent.doctor.result import Status
from agent.outbox.inspect import SCHEMA_VERSION
from agent.settings import Settings, load_settings
from tests.unit.conftest import base_config


def with_mails(path: Path, states: list[str], version: int = SCHEMA_VERSION) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE mails (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        conn.executemany("INSERT INTO mails (state) VALUES (?)", [(s,) for s in states])
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_database_absent_healthy_and_old(settings: Settings) -> None:
    """No file yet is OK; a healthy file reports its schema and mail counts; an older schema
    says it is migrated at the next start."""
    path = settings.outbox_path
    absent = database_check(settings)
    assert absent.status is Status.OK and "does not exist yet" in absent.detail
    with_mails(path, ["pending", "pending", "pending", "dead"])
    healthy = database_check(settings)
    assert healthy.status is Status.OK
    assert f"integrity ok, schema {SCHEMA_VERSION}," in healthy.detail
    assert healthy.detail.endswith("3 mail(s) pending, 1 dead")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    old = database_check(settings)
    assert old.status is Status.OK
    assert f"schema 1, migrated to {SCHEMA_VERSION} at next start" in old.detail


def test_database_newer_or_unreadable_fails_with_the_fix(settings: Settings) -> None:
    """A newer schema asks for an upgrade; a file that is not SQLite says to move it aside."""
    path = settings.outbox_path
    with_mails(path, [], version=SCHEMA_VERSION + 1)
    newer = database_check(settings)
    assert newer.status is Status.FAIL and newer.fix.startswith("upgrade faultmail")
    path.write_bytes(b"garbage " * 1000)
    broken = database_check(settings)
    assert broken.status is Status.FAIL
    assert "cannot be read as an SQLite database: file is not a database" in broken.detail
    assert f"mv {path} {path}.damaged" in broken.fix


def test_database_near_its_cap_is_a_warning(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """A file over 90 % of outbox.max_bytes is a WARN saying what happens at the cap."""
    settings = load_settings(
        write_config(base_config(tmp_path) | {"outbox": {"max_bytes": 1024 * 1024}})
    )
    with_mails(settings.outbox_path, ["pending"])
    with sqlite3.connect(settings.outbox_path) as conn:
        conn.execute("CREATE TABLE filler (blob BLOB)")
        conn.execute("INSERT INTO filler VALUES (zeroblob(1000000))")
    conn.close()
    check = database_check(settings)
    assert check.status is Status.WARN and "of outbox.max_bytes" in check.detail
    assert "ingest pauses" in check.fix


def test_state_dir_missing_writable_and_blocked(
    settings: Settings, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """A state dir that does not exist under a writable parent is OK (the daemon creates
    it); an existing writable one is OK; one under a file is a FAIL naming the key."""
    missing = state_dir_check(settings)
    assert missing.status is Status.OK and "the daemon creates it" in missing.detail
    settings.gateway.state_dir.mkdir()
    assert "is writable by" in state_dir_check(settings).detail
    (tmp_path / "file").write_text("")
    doc = base_config(tmp_path)
    doc["gateway"]["state_dir"] = str(tmp_path / "file" / "state")
    blocked = state_dir_check(load_settings(write_config(doc)))
    assert blocked.status is Status.FAIL and "gateway.state_dir" in blocked.fix
