"""faultmail's main(): parse → call → print, with the documented exit codes, in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.outbox import Outbox
from agent.settings import Settings
from tests.unit.conftest import base_config, pending_decision

Writer = Callable[[dict[str, Any]], Path]


def test_config_check_prints_the_effective_config_without_secrets(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """config check exits 0 and prints the settings as JSON, with the password left out."""
    path = write_config(base_config(tmp_path))
    assert main(["config", "check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["smtp"]["from"] == "Gateway Test <gw@example.com>"
    assert "correct horse" not in out
    assert "configuration OK" in err


def test_bad_configuration_exits_2_naming_the_key(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config is exit 2 with the key on stderr, for every command that loads it."""
    doc = base_config(tmp_path)
    doc["smtp"]["port"] = 25
    path = write_config(doc)
    assert main(["alerts", "--config", str(path)]) == 2
    assert "smtp.port" in capsys.readouterr().err


def test_missing_outbox_is_a_runtime_failure(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read command before the daemon ever ran exits 1 saying the database does not exist."""
    assert main(["alerts", "--config", str(tmp_path / "faultmail.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_alerts_lists_stored_alerts_as_json(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alerts --json prints one object per stored alert with RFC 3339 times."""
    box = Outbox(settings.outbox_path)
    box.ingest([pending_decision(1, uid="pump-1")])
    box.close()
    assert main(["alerts", "--json", "--config", str(tmp_path / "faultmail.toml")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert (row["uid"], row["state"]) == ("pump-1", "pending")
    assert row["received_at"].startswith("1970-01-01T00:00:01")


def test_block_is_audited_and_a_second_block_fails(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """devices block records the block; blocking a blocked device again exits 1."""
    Outbox(settings.outbox_path).close()
    config = str(tmp_path / "faultmail.toml")
    argv = ["devices", "block", "pump-1", "--reason", "replaced", "--config", config]
    assert main(argv) == 0
    assert "pump-1 blocked" in capsys.readouterr().out
    assert main(argv) == 1
    assert "already blocked" in capsys.readouterr().err
    assert main(["devices", "--json", "--config", config]) == 0
    (device,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (device["uid"], device["block_reason"]) == ("pump-1", "replaced")


def test_status_without_a_daemon_exits_1(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status reports not running (exit 1) when no daemon has written a heartbeat."""
    Outbox(settings.outbox_path).close()
    assert main(["status", "--json", "--config", str(tmp_path / "faultmail.toml")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and report["healthy"] is False


def test_dkim_keygen_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dkim keygen writes a new key and the TXT record, and never overwrites a key file."""
    out = tmp_path / "k.key"
    argv = ["dkim", "keygen", "--selector", "s1", "--domain", "example.com"]
    assert main([*argv, "--type", "ed25519", "--out", str(out)]) == 0
    assert "v=DKIM1" in capsys.readouterr().out
    assert main([*argv, "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
