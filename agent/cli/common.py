"""What the report and action commands share: exit codes, opening the outbox, who is acting,
and printing rows as columns or JSON lines.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from agent.settings import Settings

# 3: the outbox database is damaged; the unit must not restart into the same failure.
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_CORRUPT = 0, 1, 2, 3


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def open_outbox(settings: Settings, *, readonly: bool = True) -> Any:
    # Imported here so that commands that never open the outbox do not pay for it.
    from agent.outbox import Outbox

    return Outbox(settings.outbox_path, readonly=readonly)


def actor() -> str:
    """Who ran the command, for the audit log (the login behind sudo where there is one)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def print_rows(rows: Iterable[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
        return
    print("  ".join(columns))
    for row in rows:
        print("  ".join("-" if row.get(c) is None else str(row.get(c)) for c in columns))
