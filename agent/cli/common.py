"""What the report and action commands share: exit codes, opening the outbox, who is acting,
and printing rows as aligned columns or JSON Lines, with one time format.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, OutboxCorrupt, OutboxError

if TYPE_CHECKING:
    from agent.settings import Settings

# 3: the outbox database is damaged; the unit must not restart into the same failure.
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_CORRUPT = 0, 1, 2, 3


def reported(call: Callable[[], int]) -> int:
    """call()'s exit code; a bad configuration or outbox is said on stderr and becomes its own
    exit code (the commands and the daemon after its exec share this table)."""
    try:
        return call()
    except ConfigError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutboxCorrupt as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except OutboxError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# A table's columns are as wide as their widest cell among this many first rows (and the
# header); later rows are printed as they come, a longer cell widening only its own line.
TABLE_SAMPLE_ROWS = 500


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC to the second (2026-12-01T03:19:06Z), the one time format
    of every listing and JSON field. Rounded down, so a printed time given to --since includes
    the row it came from."""
    if ts is None:
        return None
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_time_field(name: str) -> bool:
    """Columns holding epoch seconds in the outbox: `ts`, `*_at`, `*_seen`, `*_ts`."""
    return name == "ts" or name.endswith(("_at", "_seen", "_ts"))


def open_outbox(settings: Settings, *, readonly: bool = True) -> Any:
    # Imported here so that commands that never open the outbox do not pay for it.
    from agent.outbox import Outbox

    return Outbox(settings.outbox_path, readonly=readonly)


def actor() -> str:
    """Who ran the command, for the audit log (the login behind sudo where there is one)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def print_rows(rows: Iterable[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    """Rows as JSON Lines (one object per line, every field) or as a table of `columns`; epoch
    times (see is_time_field) become RFC 3339 either way."""
    timed = (
        {k: iso(v) if is_time_field(k) and isinstance(v, int | float) else v for k, v in r.items()}
        for r in rows
    )
    if as_json:
        for row in timed:
            print(json.dumps(row, ensure_ascii=False, default=str))
        return
    print_table(timed, columns)


def print_table(
    rows: Iterable[dict[str, Any]], columns: list[str], sample: int = TABLE_SAMPLE_ROWS
) -> None:
    """Aligned columns, two spaces apart: numbers right-aligned, the last column not padded.

    Widths come from the header and the first `sample` rows, so a listing of any length
    starts printing at once and holds only those rows in memory."""
    it = iter(rows)
    head = list(islice(it, sample))
    numeric = [
        any(r.get(c) is not None for r in head) and all(_is_number(r.get(c)) for r in head)
        for c in columns
    ]
    widths = [max([_width(c), *(_width(_cell(r.get(c))) for r in head)]) for c in columns]
    line = _line_printer(widths, numeric)
    line(columns)
    for row in chain(head, it):
        line([_cell(row.get(c)) for c in columns])


def _line_printer(widths: list[int], numeric: list[bool]) -> Callable[[list[str]], None]:
    last = len(widths) - 1

    def line(cells: list[str]) -> None:
        out = []
        for i, text in enumerate(cells):
            pad = " " * max(0, widths[i] - _width(text))
            out.append(pad + text if numeric[i] else text if i == last else text + pad)
        print("  ".join(out))

    return line


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _cell(value: Any) -> str:
    """One value as table text: "-" for none, lists comma-separated, and every character a
    terminal would act on (newline, tab, ESC, bidi controls) shown as its escape."""
    if value is None:
        return "-"
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def until_reader_leaves(command: Callable[[], int]) -> int:
    """Run a command whose output may be piped into head, less or grep -q: a reader that stops
    early ends it quietly, with the exit status it had (0 for a listing cut short; a command
    whose status means something, like `status`, prints within reader_may_leave() itself), no
    BrokenPipeError traceback.

    Exit 0 rather than a shell's 141: under `set -o pipefail`, `faultmail alerts | grep -q
    pump-17` then succeeds when grep found what it stopped at, as for a short listing.
    """
    code = EXIT_OK
    with reader_may_leave():
        code = command()
        sys.stdout.flush()
    return code


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output to a reader that may stop early: a BrokenPipeError ends the output quietly.

    The recipe of the Python documentation (signal module, "Note on SIGPIPE"): stdout is
    pointed at /dev/null so that the interpreter's final flush does not fail again.
    """
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
