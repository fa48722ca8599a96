"""How the CLI prints (agent/cli/common.py): aligned tables, one time format, escaped cells;
and the group view of `faultmail status` (agent/cli/reports.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli.common import iso, print_rows, print_table
from agent.outbox import Outbox
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]


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


# --- status: the group view (issue 17) ---------------------------------------------------------

GROUP_VIEW = {
    "group": "brno-gw",
    "instance": "gw-a",
    "mode": "standby",
    "role": "active",
    "lease": "gw-a",
    "members": {
        "gw-b": {"state": "offline", "role": "standby", "since": 1_800_000_100.0},
        "gw-a": {"state": "online", "role": "active", "since": 1_800_000_000.0},
    },
    "adopted": ["gw-c"],
    "updated_at": 1_800_000_200.5,
}


def _member_config(tmp_path: Path, write_config: Writer, mode: str = "standby") -> str:
    doc = base_config(tmp_path)
    if mode != "single":
        doc["cluster"] = {"mode": mode, "group": "brno-gw", "instance": "gw-a"}
    path = write_config(doc)
    (tmp_path / "state").mkdir()
    Outbox(tmp_path / "state" / "outbox.db").close()
    return str(path)


def _status(config: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["status", *extra, "--config", config])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out


def test_status_shows_the_group_view_from_group_json(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group member's status shows group, mode, its role, the lease holder, each member with
    state, role and since, and the adopted members, in text and JSON; the exit code is still
    the daemon's health alone."""
    config = _member_config(tmp_path, write_config)
    (tmp_path / "state" / "group.json").write_text(json.dumps(GROUP_VIEW))
    box = Outbox(tmp_path / "state" / "outbox.db")
    box.health(time.time(), os.getpid())  # "running": this test process is a live pid
    box.close()
    code, out = _status(config, capsys)
    assert code == 0
    lines = out.splitlines()
    start = lines.index(f"{'group':<24}brno-gw (mode standby, instance gw-a)")
    assert lines[start + 1 :] == [
        f"{'role':<24}active",
        f"{'lease':<24}gw-a",
        f"{'member gw-a':<24}online, active, since 2027-01-15T08:00:00Z",
        f"{'member gw-b':<24}offline, standby, since 2027-01-15T08:01:40Z",
        f"{'adopted':<24}gw-c",
    ]
    code, out = _status(config, capsys, "--json")
    view = json.loads(out)["group"]
    assert code == 0 and view["problem"] is None and view["stale"] is False
    assert (view["group"], view["mode"], view["role"], view["lease"]) == (
        "brno-gw",
        "standby",
        "active",
        "gw-a",
    )
    assert view["members"]["gw-b"] == {
        "state": "offline",
        "role": "standby",
        "since": "2027-01-15T08:01:40Z",
    }
    assert view["adopted"] == ["gw-c"] and view["updated_at"] == "2027-01-15T08:03:20Z"


def test_status_marks_a_group_view_stale_when_the_daemon_is_not_running(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a running daemon the view is the last one written: the role line says as of
    when, and JSON has stale true."""
    config = _member_config(tmp_path, write_config)
    (tmp_path / "state" / "group.json").write_text(json.dumps(GROUP_VIEW))
    code, out = _status(config, capsys)
    assert code == 1
    assert (
        f"{'role':<24}active (as of 2027-01-15T08:03:20Z: the daemon is not running)"
        in out.splitlines()
    )
    assert json.loads(_status(config, capsys, "--json")[1])["group"]["stale"] is True


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "group.json does not exist (the daemon writes it once it has joined the group)"),
        (b"{not json", "group.json is not valid JSON"),
        (b"[1, 2, 3]", "group.json is not a JSON object"),
        (b'{"members": [1]}', "members is not an object or adopted not a list"),
        (b"\xff\xfe\x00", "group.json cannot be read"),
        (b'{"updated_at": NaN}', "group.json is not valid JSON (NaN is not a number"),
    ],
)
def test_status_says_clearly_when_group_json_is_missing_or_garbled(
    content: bytes | None,
    problem: str,
    tmp_path: Path,
    write_config: Writer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing or garbled group.json is one clear line (and a JSON problem field), never a
    traceback; the rest of status is unchanged."""
    config = _member_config(tmp_path, write_config)
    if content is not None:
        (tmp_path / "state" / "group.json").write_bytes(content)
    code, out = _status(config, capsys)
    assert code == 1 and out.startswith("running")
    (line,) = [x for x in out.splitlines() if x.startswith("group view")]
    assert line.startswith(f"{'group view':<24}no group view: {tmp_path / 'state'}/")
    assert problem in line
    view = json.loads(_status(config, capsys, "--json")[1])["group"]
    assert problem in view["problem"] and view["group"] == "brno-gw"


def test_status_escapes_hostile_names_in_group_json(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Member names and roles (they come from other members' messages) are printed on one line
    without control characters or lone surrogates; a member that is not an object shows "?"."""
    config = _member_config(tmp_path, write_config, mode="shared")
    view = {
        **GROUP_VIEW,
        "mode": "shared",
        "members": {"gw-\u001b[2Jx\ud800": {"state": "online\nfake", "role": 7}, "gw-q": "x"},
    }
    (tmp_path / "state" / "group.json").write_text(json.dumps(view))
    _code, out = _status(config, capsys)
    out.encode("utf-8")
    assert "\x1b" not in out
    assert f"{'member gw- [2Jx' + chr(0xFFFD):<24}online fake, ?" in out.splitlines()
    assert f"{'member gw-q':<24}?" in out.splitlines()
    assert not any(line.startswith("lease") for line in out.splitlines())  # shared: no lease


def test_single_mode_status_has_no_group_part(
    tmp_path: Path, write_config: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A single gateway's status is as before: no group key, no group lines, even with a
    group.json left over in the state directory."""
    config = _member_config(tmp_path, write_config, mode="single")
    (tmp_path / "state" / "group.json").write_text(json.dumps(GROUP_VIEW))
    _code, out = _status(config, capsys)
    assert "group" not in out
    assert "group" not in json.loads(_status(config, capsys, "--json")[1])
