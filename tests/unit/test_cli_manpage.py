"""faultmail(1) rendered from the argument parser (agent/cli/manpage.py)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from agent.cli.manpage import render
from agent.cli.parser import build_parser, commands


def test_every_command_and_option_is_in_the_page() -> None:
    """Each command and action has a COMMANDS entry and each of its options is named."""
    page = render()
    for path, parser, _ in commands(build_parser()):
        assert f"\n.B {' '.join(path)}\n".replace("-", r"\-") in page, path
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert rf"\fB{option}\fR".replace("-", r"\-") in page, (path, option)


def test_a_command_that_needs_an_action_has_no_synopsis_line_of_its_own() -> None:
    """`faultmail dkim` alone is a usage error, so the synopsis shows only `dkim keygen`."""
    synopsis = render().split(".SH DESCRIPTION")[0]
    assert ".B faultmail dkim keygen\n" in synopsis
    assert ".B faultmail dkim\n" not in synopsis
    assert ".B faultmail queue\n" in synopsis  # queue alone lists the queue


def test_page_does_not_depend_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The --config default from $FAULTMAIL_CONFIG never reaches the page (reproducible builds)."""
    before = render()
    monkeypatch.setenv("FAULTMAIL_CONFIG", "/somewhere/else.toml")
    assert render() == before
    assert "/somewhere" not in before


def test_help_text_is_escaped_for_roff() -> None:
    """Hyphens, backslashes and a leading dot in help text cannot become roff requests."""
    parser = argparse.ArgumentParser(prog="faultmail")
    sub = parser.add_subparsers(dest="command")
    odd = sub.add_parser("odd", help=".SH INJECTED")
    odd.add_argument("--dry-run", action="store_true", help="back\\slash")
    page = render(parser)
    assert "\n.SH INJECTED" not in page
    assert r"\&.SH INJECTED" in page
    assert r"\fB\-\-dry\-run\fR" in page and r"back\eslash" in page


def test_page_formats_without_warnings(tmp_path: Path) -> None:
    """groff formats the page with every warning enabled and reports nothing."""
    page = tmp_path / "faultmail.1"
    page.write_text(render(), encoding="utf-8")
    result = subprocess.run(
        ["groff", "-ww", "-z", "-man", "-Tutf8", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_options_of_faultmail_itself_are_in_the_page() -> None:
    """--version (every option of the top-level parser but --help) is under OPTIONS."""
    options = render().split(".SH OPTIONS\n", 1)[1].split(".SH ", 1)[0]
    parser = build_parser()
    top = [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
    assert top == ["--version"]
    for option in top:
        assert rf"\fB{option}\fR".replace("-", r"\-") in options
