"""The planning step of a pass (agent.planner.plan_mails), device by device when planning the
whole backlog raises.

Planning decides over validated alerts, so an exception there is a bug of ours that some
device's alerts run into. Raised out of the pass it ended the delivery stage, and after the
restart the same alerts ended it again: no alert of any device went out any more. Instead the
pass then plans each device on its own; a device whose planning still raises has its waiting
alerts recorded as dead with the error as their reason (audited, logged critical), and the
other devices' alerts go out. Storage errors are not bugs and propagate as always.
"""

from __future__ import annotations

import structlog

from agent import planner
from agent.errors import OutboxError
from agent.outbox import Outbox
from agent.planner import GroupingRules
from agent.sanitize import truncate

_log = structlog.get_logger("faultmail.dispatch")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {truncate(str(exc), 300)}"


def plan_pass(
    outbox: Outbox,
    now: float,
    domain: str,
    gateway_id: str,
    rules: GroupingRules,
    *,
    critical_first: bool = False,
) -> int:
    """planner.plan_mails; when that raises (not a storage error), each device alone."""
    try:
        return planner.plan_mails(
            outbox, now, domain, gateway_id, rules, critical_first=critical_first
        )
    except OutboxError:
        raise
    except Exception as exc:
        _log.error(
            "planning_failed",
            error=_error(exc),
            exc_info=exc,
            note="planning each device on its own; one whose alerts still fail is given up",
        )
    made = 0
    for uid in outbox.unplanned_devices():
        try:
            made += planner.plan_alerts(outbox, now, domain, gateway_id, rules, frozenset({uid}))
        except OutboxError:
            raise
        except Exception as exc:
            detail = f"internal_error: planning its mail failed: {_error(exc)}"
            ids = outbox.give_up_planning(uid, detail, now)
            _log.critical(
                "planning_gave_up",
                uid=uid,
                alert_ids=ids,
                error=_error(exc),
                exc_info=exc,
                note="these alerts are dead (faultmail alerts shows them); the other devices' "
                "alerts go out; please report this error",
            )
    return made
