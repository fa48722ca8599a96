"""[[maintenance]] windows: occurrences in local time across DST, checks, silences they store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from agent.models import AlertState
from agent.outbox import Outbox
from agent.planner import GroupingRules, plan_mails
from agent.settings.maintenance import MaintenanceWindow
from tests.unit.test_grouping import Harness

PRAGUE = ZoneInfo("Europe/Prague")


def _ts(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=PRAGUE).timestamp()


def _window(**kw: Any) -> MaintenanceWindow:
    base: dict[str, Any] = {
        "name": "night",
        "reason": "weekly PLC backup",
        "devices": ["pump-*"],
        "days": ["sat"],
        "start": "22:00",
        "end": "06:00",
        "timezone": "Europe/Prague",
    }
    return MaintenanceWindow(**{**base, **kw})


def test_overnight_window_follows_the_clock_across_spring_forward() -> None:
    """Sat 22:00-06:00 on the night clocks go forward (2026-03-29) lasts 7 hours."""
    ((begin, end),) = _window().window().occurrences(_ts(2026, 3, 28, 23), _ts(2026, 3, 28, 23, 1))
    assert (begin, end) == (_ts(2026, 3, 28, 22), _ts(2026, 3, 29, 6))
    assert end - begin == 7 * 3600


def test_overnight_window_follows_the_clock_across_fall_back() -> None:
    """Sat 22:00-06:00 on the night clocks go back (2026-10-25) lasts 9 hours."""
    ((begin, end),) = _window().window().occurrences(_ts(2026, 10, 25, 5), _ts(2026, 10, 25, 5, 1))
    assert end - begin == 9 * 3600


def test_duration_is_elapsed_time_and_start_in_the_gap_begins_after_it() -> None:
    """duration = 2h is 2 real hours; a 02:30 start on the spring-forward day begins at 03:30."""
    w = _window(days=["sun"], start="02:30", end=None, duration="2h").window()
    ((begin, end),) = w.occurrences(_ts(2026, 3, 29, 4), _ts(2026, 3, 29, 4, 1))
    assert begin == _ts(2026, 3, 29, 3, 30) and end - begin == 2 * 3600


def test_only_the_listed_days_and_each_pattern_pair() -> None:
    """No occurrence on other days; one silence per device x code pattern while it runs."""
    w = _window(days=["mon"], codes=["E1", "E2"], devices=["a-*", "b"]).window()
    assert w.silences(_ts(2026, 3, 28, 23)) == []
    running = w.silences(_ts(2026, 3, 30, 23))
    assert [(d, c) for d, c, *_ in running] == [
        ("a-*", "E1"),
        ("a-*", "E2"),
        ("b", "E1"),
        ("b", "E2"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"days": ["monday"]},
        {"start": "24:00"},
        {"start": "7:00"},
        {"duration": "2h"},
        {"end": None},
        {"end": None, "duration": "8d"},
        {"timezone": "Mars/Olympus"},
        {"devices": ["pump 1"]},
        {"devices": []},
        {"reason": ""},
        {"extra": 1},
    ],
)
def test_bad_windows_are_refused(bad: dict[str, Any]) -> None:
    """A bad day, time, duration/end pair, time zone, pattern, reason or key is refused."""
    with pytest.raises(ValidationError):
        _window(**bad)


def test_window_creates_a_maintenance_silence_once_with_notices(tmp_path: Path) -> None:
    """At its start the window is a silence (source maintenance, audited): alerts are
    silenced, one start notice and one end notice go out, no duplicate silence."""
    h = Harness(tmp_path / "outbox.db")
    outbox: Outbox = h.outbox
    rules = GroupingRules(
        repeat_window=600.0, silence_notify=("ops@example.com",), maintenance=(_window().window(),)
    )
    try:
        h.now = _ts(2026, 3, 28, 20)
        plan_mails(outbox, h.now, "example.com", "gw-1", rules)
        assert outbox.list_silences() == []
        h.now = _ts(2026, 3, 28, 21, 30)  # within the hour ahead: stored, not yet started
        plan_mails(outbox, h.now, "example.com", "gw-1", rules)
        (silence,) = outbox.list_silences()
        assert (silence["source"], silence["author"]) == ("maintenance", "maintenance night")
        assert list(outbox.claim_due(h.now, 10)) == []
        h.now = _ts(2026, 3, 28, 22, 5)
        h.alert()
        for _ in range(3):
            plan_mails(outbox, h.now, "example.com", "gw-1", rules)
        assert len(outbox.list_silences()) == 1
        assert [a["state"] for a in outbox.alerts()] == [AlertState.SILENCED]
        assert [m.notice["event"] for m in outbox.claim_due(h.now, 10) if m.notice] == ["started"]
        h.now = _ts(2026, 3, 29, 6, 1)
        plan_mails(outbox, h.now, "example.com", "gw-1", rules)
        kinds = [(m.kind.value, (m.notice or {}).get("event")) for m in outbox.claim_due(h.now, 10)]
        assert ("silence-notice", "ended") in kinds
        events = [(r["event"], r["outcome"]) for r in outbox.audit_log() if r["event"] == "silence"]
        assert events == [("silence", "created"), ("silence", "expired"), ("silence", "ended")]
    finally:
        outbox.close()
