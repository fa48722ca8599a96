"""Set keys in faultmail.toml the way a technician would: edit the line, keep everything else.

    python3 conf_edit.py FILE section.key=TOML-VALUE ...

The key must already be in that section (uncommented): the shipped file lists every setting, so
a missing one means the example changed and the test should be looked at. The result must
still parse as TOML.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def main(path: Path, assignments: list[str]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for assignment in assignments:
        dotted, _, value = assignment.partition("=")
        section, _, key = dotted.rpartition(".")
        current = ""
        for index, line in enumerate(lines):
            header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
            if header:
                current = header.group(1)
                continue
            if current == section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
                lines[index] = f"{key} = {value}\n"
                break
        else:
            raise SystemExit(f"conf_edit: no {key} = ... in [{section}] of {path}")
    text = "".join(lines)
    tomllib.loads(text)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
