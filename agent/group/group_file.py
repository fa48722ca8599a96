"""`group.json` in the state directory: the group as this member sees it, for `faultmail
status` and `faultmail doctor` (agent.cli.reports reads it). Rewritten only when it changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.health import write_atomically

GROUP_FILE = "group.json"

Log = structlog.typing.FilteringBoundLogger


class GroupFile:
    """Writes the group view next to the outbox, atomically."""

    def __init__(self, state_dir: Path, clock: Callable[[], float], log: Log) -> None:
        self._file = state_dir / GROUP_FILE
        self._clock = clock
        self.log = log
        self._written: str | None = None

    def write(self, view: dict[str, Any]) -> None:
        text = json.dumps(view, sort_keys=True)
        if text == self._written:
            return
        self._written = text
        try:
            write_atomically(
                self._file, json.dumps({**view, "updated_at": self._clock()}, indent=1)
            )
        except OSError as exc:
            self.log.warning("group_view_unwritable", path=str(self._file), error=str(exc))
