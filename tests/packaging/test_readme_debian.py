"""README.Debian's install path as packaging/test/readme_steps.py reads it for `make test-deb`:
numbered steps whose command lines are the whole path, every `faultmail` line a valid command
line, the DKIM values those of the shipped example. Fast, without root; the run itself is
test-deb's."""

from __future__ import annotations

import importlib.util
import shlex
import sys
import tomllib
from pathlib import Path
from types import ModuleType

from agent.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
README_DEBIAN = ROOT / "packaging" / "debian" / "README.Debian"
# What test-deb.sh can run: it stands in for `editor` and the package file's name only.
PROGRAMS = {"apt", "editor", "install", "faultmail", "cat", "systemctl", "journalctl"}


def readme_steps() -> ModuleType:
    path = ROOT / "packaging" / "test" / "readme_steps.py"
    spec = importlib.util.spec_from_file_location("readme_steps", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_steps"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def documented() -> list[tuple[int, str, list[str]]]:
    steps = readme_steps().steps(README_DEBIAN.read_text(encoding="utf-8"))
    return [(s.number, s.title, s.commands) for s in steps]


def test_steps_are_numbered_in_order_and_each_has_commands() -> None:
    """Steps 1..N, each with at least one command line, each line a program test-deb runs."""
    steps = documented()
    assert [n for n, _, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 9
    for number, title, commands in steps:
        assert commands, f"step {number} ({title}) has no command line"
        for line in commands:
            program = shlex.split(line, comments=True)[0]
            assert program in PROGRAMS, f"step {number}: {line!r}"


def test_the_path_goes_from_install_to_logs_in_order() -> None:
    """Install, configure (with an EHLO name), password, DKIM key with --out, DNS records,
    doctor, enable and start, send-test, status and logs: in that order. send-test comes after
    the start: run as root before the daemon ever started, it would create the outbox owned by
    root, which the daemon (user faultmail) then cannot write (seen in test-deb)."""
    lines = [line for _, _, commands in documented() for line in commands]
    expected = [
        "apt install ./faultmail_",
        "editor /etc/faultmail/faultmail.toml",
        "install -m 0600 -o root -g root /dev/null /etc/faultmail/smtp-password",
        "editor /etc/faultmail/smtp-password",
        "faultmail dkim keygen ",
        "cat /root/dkim-dns.txt",
        "faultmail doctor",
        "systemctl enable faultmail",
        "systemctl restart faultmail",
        "faultmail send-test",
        "systemctl status faultmail",
        "faultmail status",
        "journalctl -u faultmail",
    ]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(e)) for e in expected]
    assert positions == sorted(set(positions))
    text = README_DEBIAN.read_text(encoding="utf-8")
    assert "smtp.ehlo_name" in text and "gw1.example.com" in text


def test_every_faultmail_line_parses() -> None:
    """Every documented `faultmail ...` line is a valid command line of this faultmail, so a
    renamed command or option fails here before test-deb runs it."""
    parser = build_parser()
    for _, _, commands in documented():
        for line in commands:
            words = shlex.split(line.split("|")[0], comments=True)
            if words[0] == "faultmail":
                parser.parse_args(words[1:])


def test_keygen_line_matches_the_shipped_example() -> None:
    """The documented keygen writes the file the shipped faultmail.toml names, with its
    selector and domain, and its record is saved for IT."""
    example = tomllib.loads((ROOT / "config" / "faultmail.toml").read_text(encoding="utf-8"))
    (line,) = [c for _, _, cs in documented() for c in cs if "dkim keygen" in c]
    args = build_parser().parse_args(shlex.split(line.split("|")[0])[1:])
    dkim = example["dkim"]
    assert (args.selector, args.domain) == (dkim["selector"], dkim["domain"])
    assert str(args.out) == dkim["private_key_file"]
    assert line.endswith("| tee /root/dkim-dns.txt")


def test_readme_summary_is_made_of_the_documented_commands() -> None:
    """README.md's "Install on a gateway" block uses only README.Debian's command lines (joined
    with `&&` or `;`), so the short version cannot drift from the tested one."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Install on a gateway\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = {line for _, _, commands in documented() for line in commands}
    commands = {c.split(" #")[0].strip() for c in lines}
    for row in block.splitlines():
        for part in row.split("  #")[0].replace("&&", ";").split(";"):
            assert part.strip() in commands, part
