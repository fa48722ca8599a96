"""What the provider limits and the login alarm need from the outbox: recipients of mail sent
in the last 24 hours (the daily budget survives a restart), and the alarm row `faultmail
status` reads.

Free functions over an Outbox's connection, so the budget and the alarm stay one small unit.
"""

from __future__ import annotations

import json
from typing import Any

from agent.outbox._db import Database, translated

_ALARM_KEY = "auth_alarm"


def recipients_sent_since(db: Database, since: float) -> tuple[int, float | None]:
    """Recipients the relay accepted in mails sent at or after `since` (wall time; a mail
    partly sent counts what was accepted), and the earliest such send: the budget frees up
    as that one leaves the window."""
    with translated("counting recipients sent"):
        count, oldest = db._conn.execute(
            "SELECT COALESCE(SUM(json_array_length(delivered_to)), 0), MIN(sent_at) "
            "FROM mails WHERE sent_at >= ?",
            (since,),
        ).fetchone()
    return int(count), None if oldest is None else float(oldest)


def set_auth_alarm(db: Database, alarm: dict[str, Any] | None) -> None:
    """Record (or, with None, clear) that the relay refuses our login."""
    with translated("recording the login alarm"), db._transaction() as conn:
        if alarm is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (_ALARM_KEY,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_ALARM_KEY, json.dumps(alarm)),
            )


def auth_alarm(db: Database) -> dict[str, Any] | None:
    """The login alarm as the daemon recorded it: since (wall time), relay, reply."""
    with translated("reading the login alarm"):
        row = db._conn.execute("SELECT value FROM meta WHERE key = ?", (_ALARM_KEY,)).fetchone()
    return json.loads(row[0]) if row else None
