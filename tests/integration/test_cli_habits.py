"""The faultmail command as a shell user meets it: the installed console script in real
pipelines (head, grep -q), without secrets in place, and --version."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from agent.models import DeviceDelta
from agent.outbox import AuditEntry, Outbox
from agent.settings import Settings, load_settings
from tests.unit.conftest import base_config, pending_decision, to_toml

# The console script pip installed beside this interpreter (make venv: pip install -e).
FAULTMAIL = Path(sys.executable).parent / "faultmail"
# Far more than a pipe holds (64 KiB on Linux), so the writer is still writing when the
# reader has gone.
ROWS = 5000


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration whose outbox holds ROWS alerts, audit rows and a device."""
    tmp_path = tmp_path_factory.mktemp("cli-habits")
    path = tmp_path / "faultmail.toml"
    path.write_text(to_toml(base_config(tmp_path)))
    settings: Settings = load_settings(path)
    box = Outbox(settings.outbox_path)
    box.ingest(
        [pending_decision(seq, uid="pump-17", at=1_800_000_000 + seq) for seq in range(ROWS)],
        [DeviceDelta("pump-17", "devices/pump-17/fault", 1_800_000_000, received=ROWS)],
    )
    busy = "421 4.7.0 try again later " * 8
    for n in range(ROWS // 10):  # each a transaction with its fsync; 200 KB of table
        box.record(AuditEntry("send_attempt", "retry", None, (n,), detail=busy), 1e9 + n)
    box.close()
    return path


def _pipeline(command: str, unbuffered: bool = False) -> tuple[str, str, list[int]]:
    """Run a bash pipeline; its stdout, stderr and every member's exit status. With
    `unbuffered`, Python writes each print at once (PYTHONUNBUFFERED, as under some service
    managers), so the pipe breaks inside the command rather than at its final flush."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run(
        ["bash", "-c", f'{command}; echo "status ${{PIPESTATUS[*]}}" >&2'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    err, _, status = done.stderr.rpartition("status ")
    return done.stdout, err, [int(s) for s in status.split()]


@pytest.mark.parametrize(
    ("pipeline", "first_line", "unbuffered"),
    [
        ("alerts | head -1", "id  received_at", False),
        ("alerts | head -1", "id  received_at", True),
        ("audit | head", "id  ts", False),
        ("alerts --json | head -1", '{"id": 1,', False),
        ("audit --json | head -n 3", '{"id": 1,', True),
    ],
)
def test_a_reader_that_stops_early_ends_the_listing_quietly(
    config: Path, pipeline: str, first_line: str, unbuffered: bool
) -> None:
    """Piped into head, a long listing exits 0 with nothing on stderr (no BrokenPipeError
    traceback, no 'Exception ignored' line)."""
    words = pipeline.split(" | ")
    command = f"{FAULTMAIL} {words[0]} --config {config} | {words[1]}"
    out, err, status = _pipeline(command, unbuffered)
    assert err == ""
    assert status == [0, 0]
    assert out.lstrip().startswith(first_line.lstrip()), out[:200]


def test_grep_q_under_pipefail_succeeds(config: Path) -> None:
    """`set -o pipefail; faultmail alerts | grep -q pump-17` is true: grep found it and
    faultmail, cut short, exits 0 (not 1, nor a shell's 141)."""
    out, err, status = _pipeline(
        f"set -o pipefail; {FAULTMAIL} alerts --config {config} | grep -q pump-17"
    )
    assert (out, err, status) == ("", "", [0, 0])


@pytest.mark.parametrize("unbuffered", [False, True])
def test_status_keeps_its_exit_code_when_the_reader_leaves(config: Path, unbuffered: bool) -> None:
    """status piped into a reader that closed its end at once still says "not running" by
    exit 1, quietly."""
    command = f"{FAULTMAIL} status --config {config} | (exec 0<&-; sleep 0.5)"
    _, err, status = _pipeline(command, unbuffered)
    assert err == ""
    assert status == [1, 0]


def test_listings_run_before_the_secrets_exist(tmp_path: Path) -> None:
    """As a technician's first look after install: alerts, devices and queue list the outbox
    while the SMTP password and the DKIM key file are still missing; config check names them."""
    doc = base_config(tmp_path)
    doc["smtp"]["password_file"] = "/etc/faultmail-test-absent/smtp-password"
    doc["dkim"] = {
        "domain": "example.com",
        "selector": "gw2026",
        "private_key_file": "/etc/faultmail-test-absent/dkim.key",
    }
    path = tmp_path / "faultmail.toml"
    path.write_text(to_toml(doc))
    (tmp_path / "state").mkdir()
    Outbox(tmp_path / "state" / "outbox.db").close()
    for command in (["alerts"], ["devices"], ["queue", "--json"], ["audit"]):
        done = subprocess.run(
            [str(FAULTMAIL), *command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, ""), command
    check = subprocess.run(
        [str(FAULTMAIL), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 2
    assert "smtp.password_file" in check.stderr and "dkim.private_key_file" in check.stderr


def test_version_of_the_installed_command() -> None:
    """The console script's --version is the installed distribution's version."""
    done = subprocess.run(
        [str(FAULTMAIL), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == f"faultmail {metadata.version('faultmail')}\n"
