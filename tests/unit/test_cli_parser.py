"""The faultmail command line as argparse describes it (agent/cli/parser.py), no subprocess."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.cli.parser import build_parser, commands, time_arg

EXPECTED = {
    ("run",),
    ("alerts",),
    ("audit",),
    ("queue",),
    ("queue", "retry"),
    ("queue", "drop"),
    ("devices",),
    ("devices", "block"),
    ("devices", "unblock"),
    ("silence",),
    ("silence", "add"),
    ("silence", "list"),
    ("silence", "expire"),
    ("ack",),
    ("status",),
    ("send-test",),
    ("doctor",),
    ("dkim",),
    ("dkim", "keygen"),
    ("config",),
    ("config", "check"),
}


def test_parser_lists_every_command_and_action() -> None:
    """commands() walks every command and nested action, in the order --help shows them."""
    paths = [path for path, _, _ in commands(build_parser())]
    assert set(paths) == EXPECTED
    assert paths[0] == ("run",) and paths.index(("queue",)) < paths.index(("queue", "retry"))


def test_every_command_has_help() -> None:
    """Each command and action has a one-line help text for --help and the man page."""
    for path, parser, text in commands(build_parser()):
        assert text.strip(), path
        assert isinstance(parser, argparse.ArgumentParser)


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_every_command_answers_help(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """`faultmail … --help` exits 0 with a usage line naming the command."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*path, "--help"])
    assert info.value.code == 0
    assert f"usage: faultmail {' '.join(path)}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "--config", "/x.toml", "retry", "5"],
        ["queue", "retry", "5", "--config", "/x.toml"],
    ],
)
def test_config_may_stand_before_or_after_the_action(argv: list[str]) -> None:
    """--config given before the action word is not overridden by the action's default."""
    args = build_parser().parse_args(argv)
    assert args.config == Path("/x.toml")
    assert (args.command, args.queue_command, args.mail_id) == ("queue", "retry", 5)


def test_config_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, $FAULTMAIL_CONFIG names the file."""
    monkeypatch.setenv("FAULTMAIL_CONFIG", "/srv/fm.toml")
    assert build_parser().parse_args(["status"]).config == Path("/srv/fm.toml")


def test_retry_needs_an_id_or_all_dead(capsys: pytest.CaptureFixture[str]) -> None:
    """queue retry without a mail id or --all-dead is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["queue", "retry"])
    assert info.value.code == 2
    capsys.readouterr()


def test_time_arg_takes_epoch_seconds_and_rfc3339() -> None:
    """--since accepts epoch seconds, RFC 3339 with an offset, and naive times as UTC."""
    assert time_arg("1800000000.5") == 1800000000.5
    assert time_arg("2027-01-15T08:00:00+01:00") == 1_799_996_400.0
    assert time_arg("2027-01-15T07:00:00") == time_arg("2027-01-15T07:00:00+00:00")
    with pytest.raises(argparse.ArgumentTypeError, match="neither epoch seconds"):
        time_arg("yesterday")
