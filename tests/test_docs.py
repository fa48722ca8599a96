"""Documentation that cannot drift: the README's module table and command-line section, and
the man page, against the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from agent.cli.manpage import render
from agent.cli.parser import build_parser, commands

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAN_PAGE = ROOT / "packaging" / "debian" / "faultmail.1"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _documented_modules() -> set[str]:
    """Paths named in backticks in the first cell of any README table row."""
    found: set[str] = set()
    for line in _readme().splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            found.update(re.findall(r"`(agent/[^`]*)`", first_cell))
    return found


def _command_paths() -> list[str]:
    return [" ".join(path) for path, _, _ in commands(build_parser())]


def _readme_command_lines() -> list[str]:
    """The lines of the code block in the README's "Command line" section."""
    section = _readme().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_module_is_in_the_readme_table() -> None:
    """Each .py file under agent/ (inside packages too) has a row in the README's module table;
    a package's __init__.py may be listed as the package directory."""
    documented = _documented_modules()
    missing = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "agent/__init__.py":
            continue  # the import package itself: the table is its contents
        package = f"{path.parent.relative_to(ROOT).as_posix()}/"
        if rel in documented or (path.name == "__init__.py" and package in documented):
            continue
        missing.append(rel)
    assert not missing, f"add these to the module table in README.md: {missing}"


def test_every_command_is_in_the_readme() -> None:
    """Each command and action (`queue retry`, `dkim keygen`, ...) has a line in the README's
    command-line section."""
    lines = _readme_command_lines()
    missing = [
        path
        for path in _command_paths()
        if not any(re.match(rf"faultmail {re.escape(path)}(\s|$)", line) for line in lines)
    ]
    assert not missing, f"add these to the Command line section of README.md: {missing}"


def test_every_command_is_in_the_man_page() -> None:
    """Each command and action has an entry in the shipped man page."""
    page = MAN_PAGE.read_text(encoding="utf-8")
    missing = [
        path for path in _command_paths() if f"\n.B {path}\n".replace("-", r"\-") not in page
    ]
    assert not missing, f"packaging/debian/faultmail.1 lacks {missing}"


def test_man_page_is_current() -> None:
    """The shipped man page is exactly what agent.cli.manpage renders from the parser."""
    assert MAN_PAGE.read_text(encoding="utf-8") == render(), (
        "packaging/debian/faultmail.1 is stale; regenerate it: "
        ".venv/bin/python -m agent.cli.manpage > packaging/debian/faultmail.1"
    )
