"""Who gets an alert, and whether it goes out at all: routes and the recipient allowlist.

Decides before anything reaches the outbox. Per-device rate limits and blocks hook in here too.
"""

from __future__ import annotations

from agent.models import AlertState, Decision, Fault, RawMessage, Rejection
from agent.parse import topic_matches
from agent.settings import Allowlist, Route


class Policy:
    """Maps a parsed message to a Decision: pending (with recipients), suppressed or rejected."""

    def __init__(self, routes: list[Route], allowlist: Allowlist) -> None:
        self._routes = routes
        self._allowlist = allowlist

    def decide(self, raw: RawMessage, parsed: Fault | Rejection) -> Decision:
        if isinstance(parsed, Rejection):
            return Decision(
                raw=raw,
                fault=None,
                state=AlertState.REJECTED,
                reason=f"{parsed.reason}: {parsed.detail}",
                uid=parsed.uid,
            )
        recipients = self.recipients_for(raw.topic, parsed)
        if not recipients:
            return Decision(
                raw=raw,
                fault=parsed,
                state=AlertState.SUPPRESSED,
                reason="no_route: no route matches this topic at this severity",
                uid=parsed.uid,
            )
        return Decision(
            raw=raw, fault=parsed, state=AlertState.PENDING, recipients=recipients, uid=parsed.uid
        )

    def recipients_for(self, topic: str, fault: Fault) -> tuple[str, ...]:
        """Union of the recipients of every matching route, in config order, allowlisted only."""
        levels = topic.split("/")
        found: dict[str, None] = {}
        for route in self._routes:
            if fault.severity.rank > route.min_severity.rank:
                continue
            if any(topic_matches(flt.split("/"), levels) for flt in route.topics):
                found.update(dict.fromkeys(route.to))
        # Config validation already refused outsiders; this keeps the rule local and total.
        return tuple(addr for addr in found if self._allowlist.allows(addr))
