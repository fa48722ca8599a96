"""How the CLI prints (agent/cli/common.py): aligned tables, one time format, escaped cells."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.cli.common import iso, print_rows, print_table


def _starts(line: str, words: list[str]) -> list[int]:
    """The offset of each word in line, searched left to right."""
    found, at = [], 0
    for word in words:
        at = line.index(word, at)
        found.append(at)
        at += len(word)
    return found


def test_table_columns_line_up_and_numbers_align_right(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every column starts at the same offset on each line, numbers end at the same offset,
    and the last column carries no trailing spaces."""
    rows = [
        {"id": 7, "uid": "pump-17", "state": "pending", "reason": None},
        {"id": 12345, "uid": "x", "state": "rejected", "reason": "invalid_json: line 1"},
    ]
    print_table(rows, ["id", "uid", "state", "reason"])
    header, first, second = capsys.readouterr().out.splitlines()
    assert header == "   id  uid      state     reason"
    assert first == "    7  pump-17  pending   -"
    assert second == "12345  x        rejected  invalid_json: line 1"
    assert _starts(first, ["pump-17", "pending"]) == _starts(header, ["uid", "state"])


def test_table_widths_come_from_the_first_rows_and_the_rest_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With more rows than the sample, the header and the sampled rows are printed before the
    rest is read; a later, longer cell widens only its own line and is never cut."""

    def rows() -> Iterator[dict[str, Any]]:
        yield {"uid": "a", "code": "E1"}
        yield {"uid": "bb", "code": "E2"}
        # Resumed only when the rest is read: the header and the sample are out by then.
        assert capsys.readouterr().out == "uid  code\na    E1\nbb   E2\n"
        yield {"uid": "a-much-longer-uid", "code": "E3"}
        yield {"uid": "c", "code": "E4"}

    print_table(rows(), ["uid", "code"], sample=2)
    assert capsys.readouterr().out == "a-much-longer-uid  E3\nc    E4\n"


def test_table_cells_escape_what_a_terminal_would_act_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Newlines, tabs, ESC and bidi overrides in a cell are shown escaped, on one line; lists
    are comma-separated; wide characters count two columns."""
    rows: list[dict[str, Any]] = [
        {"reason": "bad\n\x1b[31mred\t\u202e", "alert_ids": [1, 2, 3], "uid": "泵-1"},
        {"reason": "ok", "alert_ids": [], "uid": "p"},
    ]
    print_table(rows, ["reason", "alert_ids", "uid"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[1] == r"bad\n\x1b[31mred\t\u202e  1,2,3      泵-1"
    assert lines[0] == "reason" + " " * 18 + "  alert_ids  uid"


def test_times_are_rfc3339_utc_to_the_second_rounded_down() -> None:
    """One time format everywhere: 2026-12-01T03:19:06Z, never after the stored time."""
    assert iso(1_796_095_146.99) == "2026-12-01T03:19:06Z"
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(None) is None


def test_json_rows_convert_every_time_field(capsys: pytest.CaptureFixture[str]) -> None:
    """print_rows turns ts, *_at, *_seen and *_ts epoch values into RFC 3339, JSON or table,
    and leaves counters and durations alone."""
    row = {"ts": 1.0, "first_seen": 2.0, "blocked_at": None, "device_ts": 3.0, "age_s": 4.5}
    print_rows([row], True, [])
    assert capsys.readouterr().out == (
        '{"ts": "1970-01-01T00:00:01Z", "first_seen": "1970-01-01T00:00:02Z", '
        '"blocked_at": null, "device_ts": "1970-01-01T00:00:03Z", "age_s": 4.5}\n'
    )
