"""Accounting for the fault tests: what was published, what the relay got, what went missing.

`account` compares three views of one run: the (uid, seq) pairs the test published, the
daemon's `alerts --json` rows and the mails the relay accepted. It checks the invariants that
hold under every fault (one alert row per published message, all copies of an alert's mail
carry one Message-ID, that Message-ID is the alert's) and counts:

- published: distinct (uid, seq) the test published;
- delivered: published alerts whose Message-ID the relay received;
- duplicated: relay copies beyond the first, per alert (a duplicated digest of 20 alerts
  counts 20; `duplicate_mails` counts it once);
- lost: published with no alert row, or a row that is not accounted for: not sent (with its
  mail at the relay), rejected, suppressed or dead with a reason, unless the test expected it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.compose import parse_id_ranges
from tests.harness.daemon import Daemon
from tests.harness.relay import ReceivedMail, Relay

Row = dict[str, Any]
Key = tuple[str, int]

# Retry fast so that a fault costs seconds, not minutes.
FAST_DELIVERY: dict[str, Any] = {
    "retry_initial": 0.2,
    "retry_max": 2.0,
    "probe_interval": 0.3,
    "poll_interval": 0.5,
}

ACCOUNTED_STATES = frozenset({"rejected", "suppressed"})  # and sent, dead with a reason


@dataclass
class Figures:
    published: int
    delivered: int
    duplicated: int
    lost: int
    mails: int = 0  # distinct Message-IDs the relay accepted
    duplicate_mails: int = 0  # relay copies beyond the first, per Message-ID
    problems: list[str] = field(default_factory=list)
    lost_detail: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)


def alert_ids_of(mail: ReceivedMail) -> list[int]:
    """The alert ids a mail carries (header X-Faultmail-Alert-Ids)."""
    value = mail.message["X-Faultmail-Alert-Ids"]
    return parse_id_ranges(str(value or ""))


def mailed_alert_ids(mails: Iterable[ReceivedMail]) -> set[int]:
    return {alert_id for mail in mails for alert_id in alert_ids_of(mail)}


def account(
    published: Iterable[Key],
    alerts: list[Row],
    relay_mails: list[ReceivedMail],
    *,
    expect: Callable[[Row], bool] | None = None,
) -> Figures:
    """Compare published messages, alert rows and relay mails; see the module docstring."""
    keys = set(published)
    problems: list[str] = []
    rows_by_key: dict[Key, list[Row]] = defaultdict(list)
    rows_by_id: dict[int, Row] = {}
    for row in alerts:
        rows_by_id[int(row["id"])] = row
        if row.get("uid") is not None and row.get("seq") is not None:
            rows_by_key[(str(row["uid"]), int(row["seq"]))].append(row)
    for key, rows in sorted(rows_by_key.items()):
        if len(rows) > 1:
            problems.append(f"{key} stored {len(rows)} times: {[r['id'] for r in rows]}")

    copies: dict[int, int] = defaultdict(int)
    message_ids: dict[int, set[str | None]] = defaultdict(set)
    per_message_id: dict[str | None, int] = defaultdict(int)
    for mail in relay_mails:
        per_message_id[mail.message_id] += 1
        ids = alert_ids_of(mail)
        if not ids:
            problems.append(f"relay mail {mail.message_id} has no X-Faultmail-Alert-Ids")
        for alert_id in ids:
            copies[alert_id] += 1
            message_ids[alert_id].add(mail.message_id)
    for alert_id, mids in sorted(message_ids.items()):
        if len(mids) != 1:
            problems.append(f"alert {alert_id} reached the relay under {len(mids)} Message-IDs")
        alert_row = rows_by_id.get(alert_id)
        if alert_row is None:
            problems.append(f"relay got alert {alert_id}, which has no alert row")
        elif alert_row.get("message_id") not in mids:
            got = sorted(map(str, mids))
            said = alert_row.get("message_id")
            problems.append(f"alert {alert_id} row says {said}, relay got {got}")

    delivered = 0
    lost_detail: list[str] = []
    for key in sorted(keys):
        key_rows = rows_by_key.get(key)
        if not key_rows:
            lost_detail.append(f"{key}: no alert row")
            continue
        row = key_rows[0]
        at_relay = copies.get(int(row["id"]), 0) > 0
        delivered += at_relay
        state = row.get("state")
        if state == "sent":
            if not at_relay:
                lost_detail.append(f"{key}: alert {row['id']} sent, but the relay never got it")
            continue
        if state in ACCOUNTED_STATES or (state == "dead" and row.get("reason")):
            continue
        if expect is not None and expect(row):
            continue
        lost_detail.append(f"{key}: alert {row['id']} is {state} ({row.get('reason')})")
    states: dict[str, int] = defaultdict(int)
    for row in alerts:
        states[str(row.get("state"))] += 1
    return Figures(
        published=len(keys),
        delivered=delivered,
        duplicated=sum(n - 1 for n in copies.values()),
        lost=len(lost_detail),
        mails=len(per_message_id),
        duplicate_mails=sum(n - 1 for n in per_message_id.values()),
        problems=problems,
        lost_detail=lost_detail,
        states=dict(states),
    )


def settle(
    dm: Daemon,
    relay: Relay,
    published: Iterable[Key],
    *,
    mails: int | None = None,
    timeout: float = 60.0,
    allow_pending: bool = False,
) -> list[Row]:
    """Wait until the relay has mail for `mails` alerts (default: one per published message),
    then until every published message has an alert row and none is pending; return the rows."""
    keys = set(published)
    wanted = len(keys) if mails is None else mails
    deadline = time.monotonic() + timeout
    while len(mailed_alert_ids(relay.mails)) < wanted and time.monotonic() < deadline:
        time.sleep(0.1)

    def done(rows: list[Row]) -> bool:
        stored = {(str(r["uid"]), int(r["seq"])) for r in rows if r.get("seq") is not None}
        return keys <= stored and (allow_pending or all(r["state"] != "pending" for r in rows))

    while True:
        rows = dm.alerts()
        if done(rows):
            return rows
        if time.monotonic() > deadline:
            return rows  # account() reports what is missing
        time.sleep(0.3)


def outcomes(rows: list[Row]) -> dict[str, int]:
    """Audit outcomes of send attempts, counted."""
    out: dict[str, int] = defaultdict(int)
    for row in rows:
        out[str(row["outcome"])] += 1
    return dict(out)
