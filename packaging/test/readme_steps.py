"""The numbered steps of README.Debian's "From the package to the first mail", with their
command lines, so that the package test runs the documented path itself and the document
cannot go stale.

    python3 readme_steps.py README.Debian

prints one line per step, `STEP<TAB>number<TAB>title`, each followed by its commands,
`CMD<TAB>number<TAB>command line`. The rules (README.Debian says them too): a step starts
with `N. ` at the start of a line; a command line is indented by exactly seven spaces (the
step's three plus four); anything else (prose, tables indented by five) is not run.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SECTION = "From the package to the first mail"
COMMAND_INDENT = " " * 7
_STEP = re.compile(r"^(\d+)\. (.*)$")


@dataclass
class Step:
    number: int
    title: str
    commands: list[str] = field(default_factory=list)


def steps(text: str) -> list[Step]:
    """The numbered steps of SECTION, in order, with their command lines."""
    lines = text.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise SystemExit(f"readme_steps: no section {SECTION!r}") from None
    found: list[Step] = []
    for index in range(start + 2, len(lines)):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line and following and set(following) == {"-"}:
            break  # the next section's title
        match = _STEP.match(line)
        if match:
            title = re.split(r"(?<=\.) |:$", match.group(2), maxsplit=1)[0].rstrip(".")
            found.append(Step(int(match.group(1)), title))
        elif line.startswith(COMMAND_INDENT) and line[7] != " " and found:
            found[-1].commands.append(line[7:].rstrip())
    return found


def main(path: Path) -> None:
    for step in steps(path.read_text(encoding="utf-8")):
        print(f"STEP\t{step.number}\t{step.title}")
        for command in step.commands:
            print(f"CMD\t{step.number}\t{command}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
