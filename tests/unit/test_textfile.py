"""The metrics textfile: written without going through anything another user planted in its
directory, readable by node_exporter whatever the umask, and doctor's warning about a textfile
directory that others can write to."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import doctor
from agent.doctor.local import textfile_check
from agent.doctor.result import Status
from agent.health import write_atomically
from agent.settings import load_settings
from tests.harness.ports import free_port
from tests.unit.conftest import base_config

TEXT = "faultmail_up 1\n"


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """The unit's UMask=0077 for the duration of the test."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_symlinks_at_the_old_temporary_names_are_not_written_through(tmp_path: Path) -> None:
    """Links planted at `.NAME.<pid>.tmp` for this pid and the next ones leave their target
    untouched and are not moved into place; the textfile is a new regular file."""
    victim = tmp_path / "outbox.db-wal"
    victim.write_bytes(b"WAL frames")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    target = textdir / "faultmail.prom"
    pid = os.getpid()
    links = [textdir / f".{target.name}.{p}.tmp" for p in range(pid, pid + 16)]
    for link in links:
        link.symlink_to(victim)
    write_atomically(target, TEXT)
    write_atomically(target, TEXT + TEXT)
    assert victim.read_bytes() == b"WAL frames"
    assert not target.is_symlink() and target.read_text() == TEXT + TEXT
    assert all(link.is_symlink() and link.resolve() == victim for link in links)


def test_a_symlink_at_the_textfile_itself_is_replaced_not_followed(tmp_path: Path) -> None:
    """A link planted at the textfile's own name is replaced by the file; its target keeps
    its bytes."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "faultmail.prom"
    target.symlink_to(victim)
    write_atomically(target, TEXT)
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and target.read_text() == TEXT


@pytest.mark.usefixtures("strict_umask")
def test_textfile_is_world_readable_under_umask_0077(tmp_path: Path) -> None:
    """Under the unit's UMask=0077 the textfile is still 0644, so node_exporter can read it,
    also when it replaces an older 0600 file."""
    target = tmp_path / "faultmail.prom"
    target.write_text("old\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomically(target, TEXT)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == TEXT


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """When the rename fails (a directory sits at the textfile's name) the error reaches the
    caller and no temporary file is left behind in the textfile directory."""
    target = tmp_path / "faultmail.prom"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomically(target, TEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faultmail.prom"]


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        (0o755, Status.OK),
        (0o1777, Status.OK),
        (0o3775, Status.OK),
        (0o775, Status.WARN),
        (0o757, Status.WARN),
        (0o777, Status.WARN),
    ],
)
def test_doctor_warns_about_a_textfile_directory_others_can_write(
    tmp_path: Path,
    write_config: Callable[[dict[str, Any]], Path],
    mode: int,
    status: Status,
) -> None:
    """A textfile directory writable by group or others without the sticky bit is a WARN whose
    fix is the chmod; owner-only or sticky directories are OK."""
    textdir = tmp_path / "node-exporter"
    textdir.mkdir()
    textdir.chmod(mode)
    doc = base_config(tmp_path) | {"health": {"metrics_textfile": str(textdir / "fm.prom")}}
    check = textfile_check(load_settings(write_config(doc)))
    assert check.name == "metrics textfile"
    assert check.status is status, check
    assert str(textdir) in check.detail
    if status is Status.WARN:
        assert "health.metrics_textfile" in check.detail
        assert check.fix == f"chmod go-w {textdir} (or chmod +t {textdir})"


def test_doctor_shows_the_textfile_line_only_when_one_is_configured(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """`doctor` adds a "metrics textfile" line after the local checks when
    health.metrics_textfile is set, and none when it is not."""
    closed = free_port()  # nothing listens: every network check fails at once
    doc = base_config(tmp_path)
    doc["mqtt"] |= {"port": closed}
    doc["smtp"] |= {"host": "127.0.0.1", "port": closed}
    without = doctor.run(
        load_settings(write_config(doc)), resolver="127.0.0.1", resolver_port=closed, timeout=0.5
    )
    textdir = tmp_path / "node-exporter"
    textdir.mkdir(mode=0o777)
    textdir.chmod(0o777)
    doc["health"] = {"metrics_textfile": str(textdir / "fm.prom")}
    with_file = doctor.run(
        load_settings(write_config(doc)), resolver="127.0.0.1", resolver_port=closed, timeout=0.5
    )
    assert "metrics textfile" not in [c.name for c in without]
    names = [c.name for c in with_file]
    assert names[:5] == ["config", "state dir", "database", "disk", "metrics textfile"]
    assert with_file[4].status is Status.WARN
