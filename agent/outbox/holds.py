"""Why a pending alert or mail waits, and until when (`alerts --json` reason and due_at,
`faultmail queue`, `status`), derived from what the outbox stores: a thread's repeat window
or its acknowledgement, a mail's due time and its last attempt's outcome, a device's mails
within the budget window, and the gate row the delivery loop records in `meta` (relay pause,
per-minute cap, device budget, daily recipient budget).

Several things can hold one alert at once (a repeat window while the relay is down); the one
that lasts longest is the reason given, since it is what the alert waits for in the end. A
repeat of an acknowledged thread says `acknowledged` (no time) whatever else holds the queue:
it goes out only with the thread's resolve or an escalation.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.models import AlertState, FaultState, MailKind, Severity
from agent.outbox._schema import MailState

# The reasons, spelt once.
REPEAT_WINDOW = "repeat window"
DEVICE_BUDGET = "device budget"
RELAY_UNREACHABLE = "relay unreachable"
RELAY_LOGIN = "relay refuses login"
RELAY_TLS = "relay TLS failure"
CAP = "mails-per-minute cap"
# The provider's daily recipient budget (delivery.max_recipients_per_day): nothing goes out
# until the oldest sends of the last 24 hours leave the window.
RECIPIENT_BUDGET = "daily recipient budget"
# A repeat of an acknowledged thread: it goes out with the resolve or an escalation (no time).
ACKNOWLEDGED = "acknowledged"
RETRY_4XX = "retry after 4xx"
RETRY_INTERNAL = "retry after internal error"
DIGEST = "digest"
QUEUED = "queued for delivery"
# Not planned yet and nothing holds it: the delivery loop's next pass takes it (no time).
NEXT_PASS = "next delivery pass"

GATE_KEY = "gate"

# A retry's audit outcome (`retry:<kind>`, see dispatch.attempt) → the reason it waits.
_RETRY_REASONS = {
    "connect": RELAY_UNREACHABLE,
    "timeout": RELAY_UNREACHABLE,
    "auth": RELAY_LOGIN,
    "tls": RELAY_TLS,
    "internal": RETRY_INTERNAL,
}

Hold = tuple[str, float | None]


class BudgetRules(Protocol):
    """What holds need of the grouping rules (planner.GroupingRules has both)."""

    @property
    def device_budget(self) -> int: ...

    @property
    def device_window(self) -> float: ...


def retry_reason(outcome: str | None, code: int | None) -> str:
    """The reason a mail waits after an attempt with this audit outcome."""
    if outcome and outcome.startswith("retry:"):
        return _RETRY_REASONS.get(outcome.removeprefix("retry:"), RETRY_4XX)
    # "sent" yet pending: some recipients refused with 4xx are retried alone.
    return RETRY_4XX


@dataclass(frozen=True, slots=True)
class Gate:
    """What holds the whole queue back, as the delivery loop last recorded it (wall times)."""

    paused_until: float | None = None
    pause_reason: str | None = None
    cap_until: float | None = None
    device_budget: int = 0
    device_window: float = 0.0
    budget_until: float | None = None

    def as_json(self) -> str:
        return json.dumps(
            {
                "paused_until": self.paused_until,
                "pause_reason": self.pause_reason,
                "cap_until": self.cap_until,
                "device_budget": self.device_budget,
                "device_window": self.device_window,
                "budget_until": self.budget_until,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Gate:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            paused_until=raw.get("paused_until"),
            pause_reason=raw.get("pause_reason"),
            cap_until=raw.get("cap_until"),
            device_budget=int(raw.get("device_budget") or 0),
            device_window=float(raw.get("device_window") or 0.0),
            budget_until=raw.get("budget_until"),
        )

    @classmethod
    def recorded(
        cls,
        now: float,
        pause_left: float,
        cap_wait: float | None,
        pause_reason: str,
        rules: BudgetRules | None,
        budget_wait: float | None = None,
    ) -> Gate:
        """The gate from the loop's monotonic view: seconds left, rounded up to the second (a
        due time never before the real one; an idle loop rewrites it only when it moved).
        `budget_wait`: seconds until the daily recipient budget frees a slot, while it holds."""
        paused = pause_left > 0
        return cls(
            paused_until=math.ceil(now + pause_left) if paused else None,
            pause_reason=pause_reason if paused else None,
            cap_until=math.ceil(now + cap_wait) if cap_wait is not None else None,
            device_budget=rules.device_budget if rules else 0,
            device_window=rules.device_window if rules else 0.0,
            budget_until=math.ceil(now + budget_wait) if budget_wait is not None else None,
        )


def _latest(holds: Iterable[Hold]) -> Hold:
    """The hold that lasts longest; on a tie the first (the more specific) one."""
    best: Hold | None = None
    for hold in holds:
        if best is None or (hold[1] or 0.0) > (best[1] or 0.0):
            best = hold
    assert best is not None
    return best


@dataclass(slots=True)
class HoldContext:
    """Everything a row's hold depends on beyond the row itself, read once per listing."""

    now: float
    gate: Gate = field(default_factory=Gate)
    # Last send attempt of each pending mail that had one: (outcome, smtp code).
    last_outcome: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    # Devices whose unplanned alerts wait for the device budget: uid → when it frees.
    budget_until: dict[str, float] = field(default_factory=dict)

    def _gate_holds(self, due: bool) -> list[Hold]:
        gate, now = self.gate, self.now
        out: list[Hold] = []
        if gate.paused_until is not None and gate.paused_until > now:
            out.append((gate.pause_reason or RELAY_UNREACHABLE, gate.paused_until))
        if due and gate.cap_until is not None and gate.cap_until > now:
            out.append((CAP, gate.cap_until))
        # Over the daily recipient budget no mail goes, due or not (and what is planned next
        # joins them): until the oldest send of the last 24 hours leaves the window.
        if gate.budget_until is not None and gate.budget_until > now:
            out.append((RECIPIENT_BUDGET, gate.budget_until))
        return out

    def mail_hold(self, mail_id: int, kind: str, attempts: int, next_at: float) -> Hold:
        """A pending mail: its retry (or simply its turn), the relay pause, the cap."""
        if attempts > 0 and mail_id in self.last_outcome:
            first: Hold = (retry_reason(*self.last_outcome[mail_id]), next_at)
        else:
            first = (DIGEST if kind == MailKind.DIGEST else QUEUED, next_at)
        return _latest([first, *self._gate_holds(next_at <= self.now)])

    def alert_hold(self, row: dict[str, Any]) -> Hold:
        """A pending alert, from its own columns and the `_`-prefixed ones of HOLD_COLUMNS."""
        if row["mail_id"] is not None:
            if row["_m_state"] != MailState.PENDING:
                return (QUEUED, None)
            return self.mail_hold(
                row["mail_id"], row["_m_kind"], row["attempts"] or 0, row["_m_next"]
            )
        if acked_repeat(row):
            # Waits for the thread's resolve or escalation, whatever else holds the queue.
            return (ACKNOWLEDGED, None)
        holds: list[Hold] = []
        if in_repeat_window(row, self.now):
            holds.append((REPEAT_WINDOW, row["_t_until"]))
        if row["uid"] in self.budget_until:
            holds.append((DEVICE_BUDGET, self.budget_until[row["uid"]]))
        # Planning waits out a relay pause (what piles up may become one digest); the mail
        # it would make waits for the daily recipient budget.
        holds += self._gate_holds(False)
        return _latest(holds) if holds else (NEXT_PASS, None)


def in_repeat_window(row: dict[str, Any], now: float) -> bool:
    """An unplanned repeat of an open thread whose window has not ended (a resolve or an
    escalation would go out at once: grouping.py)."""
    until = row["_t_until"]
    if not row["_t_open"] or until is None or until <= now:
        return False
    if row["fault_state"] == FaultState.RESOLVED:
        return False
    return bool(Severity(row["severity"]).rank >= row["_t_rank"])


def acked_repeat(row: dict[str, Any]) -> bool:
    """An unplanned repeat of an open thread whose acknowledgement holds (planner.holding_acks:
    the thread was opened before the ack and has not escalated above it): grouping.py holds it
    until the thread resolves or escalates. A resolve or an escalation would go out at once."""
    if row["_k_at"] is None or not row["_t_open"] or row["_t_opened"] is None:
        return False
    if row["_t_opened"] > row["_k_at"] or row["_t_rank"] < row["_k_rank"]:
        return False
    if row["fault_state"] == FaultState.RESOLVED:
        return False
    return bool(Severity(row["severity"]).rank >= row["_t_rank"])


# The columns alert_hold reads beyond an alert's own (threads and acks only for unplanned
# alerts).
HOLD_COLUMNS = (
    "t.is_open AS _t_open, t.window_until AS _t_until, t.severity_rank AS _t_rank, "
    "t.opened_at AS _t_opened, k.acked_at AS _k_at, k.severity_rank AS _k_rank, "
    "m.state AS _m_state, m.kind AS _m_kind, m.next_attempt_at AS _m_next"
)
HOLD_JOINS = (
    "LEFT JOIN mails m ON m.id = a.mail_id "
    f"LEFT JOIN threads t ON a.state = '{AlertState.PENDING}' AND a.mail_id IS NULL "
    "AND t.key = thread_key(a.uid, a.code) "
    "LEFT JOIN acks k ON t.key IS NOT NULL AND k.thread_key = t.key"
)


def read_context(conn: sqlite3.Connection, now: float) -> HoldContext:
    """The gate row, the last outcome of each retried pending mail, and the devices held by
    the budget (grouping.py: a device whose mails would overspend it while one of its mails
    lies in the window waits until none does)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (GATE_KEY,)).fetchone()
    gate = Gate.from_json(row[0] if row else None)
    last = {
        int(mail_id): (str(outcome), code)
        for mail_id, outcome, code, _ in conn.execute(
            "SELECT mail_id, outcome, smtp_code, MAX(id) FROM audit "
            "WHERE event = 'send_attempt' AND mail_id IN (SELECT id FROM mails "
            f"WHERE state = '{MailState.PENDING}' AND attempts > 0) GROUP BY mail_id"
        )
    }
    ctx = HoldContext(now, gate, last)
    if gate.device_budget > 0:
        ctx.budget_until = _budget_holds(conn, ctx, gate.device_budget, gate.device_window)
    return ctx


def _budget_holds(
    conn: sqlite3.Connection, ctx: HoldContext, budget: int, window: float
) -> dict[str, float]:
    now = ctx.now
    codes: dict[str, set[str]] = {}
    for r in conn.execute(
        f"SELECT a.uid, a.code, a.severity, a.fault_state, {HOLD_COLUMNS} FROM alerts a "
        f"{HOLD_JOINS} WHERE a.state = '{AlertState.PENDING}' AND a.mail_id IS NULL"
    ):
        row = dict(r)
        if row["uid"] is not None and not (in_repeat_window(row, now) or acked_repeat(row)):
            codes.setdefault(row["uid"], set()).add(row["code"])
    if not codes:
        return {}
    held: dict[str, float] = {}
    for uid, used, last in conn.execute(
        "SELECT a.uid, COUNT(DISTINCT m.id), MAX(m.created_at) FROM mails m "
        "JOIN alerts a ON a.mail_id = m.id WHERE m.created_at > ? AND m.created_at <= ? "
        "AND a.uid IN (SELECT value FROM json_each(?)) GROUP BY a.uid",
        (now - window, now + window, json.dumps(sorted(codes))),
    ):
        if used > 0 and used + len(codes[uid]) > budget:
            held[str(uid)] = float(last) + window
    return held
