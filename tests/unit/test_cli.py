"""faultmail's main(): parse → call → print, with the documented exit codes, in-process."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.parser import build_parser, commands, version
from agent.models import Decision, DeviceDelta, RawMessage, Reason
from agent.outbox import AuditEntry, Outbox
from agent.planner import plan_mails
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


# --- CLI habits (issue 15) ------------------------------------------------------------------

# Around 2027: an epoch number this size in any JSON output is a time left unconverted.
T0 = 1_800_000_000.25
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _every_kind_of_row(settings: Settings) -> None:
    """An outbox with a pending alert in a mail that went dead, a rejected one, device
    counters, a block, an audit row and a daemon heartbeat, all stamped around T0."""
    box = Outbox(settings.outbox_path)
    raw = RawMessage("devices/pump-1/fault", b'{\x00\xff \\ "x"\n', 2, 1, False, T0 + 1)
    box.ingest(
        [
            pending_decision(1, uid="pump-1", at=T0),
            Decision.rejected(raw, Reason.INVALID_JSON, "line 1", "pump-1"),
        ],
        [DeviceDelta("pump-1", "devices/pump-1/fault", T0 + 1, received=2, rejected=1)],
    )
    plan_mails(box, T0 + 2, "example.com", "gw")
    (mail,) = box.claim_due(T0 + 3, 10)
    box.mark_dead(mail, T0 + 4, AuditEntry("send_attempt", "dead", mail.id, smtp_code=550))
    box.set_blocked("pump-1", True, "replaced", T0 + 5, "dave")
    box.health(T0 + 6, 1, {"intake": {"state": "alive", "silent_s": 0.5, "error": None}})
    box.close()


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return []


def test_every_json_time_of_every_command_is_rfc3339_utc(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alerts, audit, queue, devices and status --json: each time field is RFC 3339 UTC
    (…Z) and no field holds an epoch number (devices --json mixed the two)."""
    _every_kind_of_row(settings)
    config = str(tmp_path / "faultmail.toml")
    objects = []
    for command in (["alerts"], ["audit"], ["queue"], ["devices"], ["status"]):
        main([*command, "--json", "--config", config])
        lines = capsys.readouterr().out.splitlines()
        assert lines, command
        objects += [json.loads(line) for line in lines]
    stamped = set()
    for obj in objects:
        assert not [n for n in _numbers(obj) if abs(n - T0) < 86_400], obj
        for key, value in obj.items():
            if (key == "ts" or key.endswith(("_at", "_seen", "_send"))) and value is not None:
                assert RFC3339_UTC.fullmatch(value), (key, value)
                stamped.add(key)
    assert stamped == {
        "received_at",
        "ts",
        "created_at",
        "next_attempt_at",
        "first_seen",
        "last_seen",
        "blocked_at",
    }


def test_rejected_alerts_carry_their_payload_sample_escaped(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alerts --json has "sample" for a rejected alert: the stored bytes as printable text
    (non-ASCII and control bytes as escapes); null for an alert that parsed."""
    _every_kind_of_row(settings)
    assert main(["alerts", "--json", "--config", str(tmp_path / "faultmail.toml")]) == 0
    pending, rejected = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert pending["sample"] is None
    assert rejected["state"] == "rejected" and rejected["reason"].startswith("invalid_json")
    assert rejected["sample"] == r'{\x00\xff \\ "x"\n'


def _without_secrets(tmp_path: Path, write_config: Writer) -> str:
    """A config naming an SMTP password file and DKIM key that do not exist (yet)."""
    doc = base_config(tmp_path)
    doc["smtp"]["password_file"] = str(tmp_path / "absent-smtp-password")
    doc["dkim"] = {
        "domain": "example.com",
        "selector": "gw2026",
        "private_key_file": str(tmp_path / "absent-dkim.key"),
    }
    path = write_config(doc)
    Outbox(tmp_path / "state" / "outbox.db").close()
    return str(path)


@pytest.mark.parametrize(
    "command",
    [["alerts"], ["audit"], ["queue"], ["devices"], ["alerts", "--json"], ["queue", "--json"]],
)
def test_read_only_commands_need_no_secret_files(
    command: list[str],
    tmp_path: Path,
    write_config: Writer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The listings work while the SMTP password file and the DKIM key are still missing."""
    (tmp_path / "state").mkdir()
    config = _without_secrets(tmp_path, write_config)
    assert main([*command, "--config", config]) == 0
    assert capsys.readouterr().err == ""


def test_status_needs_no_secret_files(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """status reads the outbox without the secrets: not running is exit 1, not a config error."""
    (tmp_path / "state").mkdir()
    config = _without_secrets(tmp_path, write_config)
    assert main(["status", "--json", "--config", config]) == 1
    assert json.loads(capsys.readouterr().out)["running"] is False


@pytest.mark.parametrize("command", [["config", "check"], ["send-test"], ["queue", "drop", "1"]])
def test_commands_that_authenticate_or_change_still_require_the_secrets(
    command: list[str],
    tmp_path: Path,
    write_config: Writer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """config check, send-test and the queue actions still exit 2 naming each missing file."""
    (tmp_path / "state").mkdir()
    config = _without_secrets(tmp_path, write_config)
    extra = ["--reason", "r"] if command[0] == "queue" else []
    assert main([*command, *extra, "--config", config]) == 2
    err = capsys.readouterr().err
    assert "smtp.password_file" in err and "absent-smtp-password" in err
    assert "dkim.private_key_file" in err


def test_listing_still_refuses_what_is_wrong_besides_the_secrets(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without secrets the rest is checked as before: a bad port is still exit 2."""
    (tmp_path / "state").mkdir()
    config = Path(_without_secrets(tmp_path, write_config))
    config.write_text(config.read_text().replace("port = 587", "port = 25"))
    assert main(["alerts", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "smtp.port" in err and "password_file" not in err


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    """faultmail --version prints the version importlib.metadata has for faultmail."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"faultmail {metadata.version('faultmail')}\n"


def test_version_from_a_bare_source_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without installed metadata, the version is pyproject.toml's."""

    def absent(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", absent)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert version() == pyproject["project"]["version"]


def test_every_json_option_says_json_lines() -> None:
    """Each listing's --json help says it prints JSON Lines, one object per line."""
    seen = 0
    for path, sub, _ in commands(build_parser()):
        for action in sub._actions:
            if "--json" in action.option_strings and path != ("status",):
                assert "JSON Lines" in (action.help or ""), path
                seen += 1
    assert seen == 6  # alerts, audit, queue, devices, silence, silence list
