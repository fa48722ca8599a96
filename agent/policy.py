"""Who gets an alert, and whether it goes out at all: routes and the recipient allowlist.

Decides before anything reaches the outbox. Per-device rate limits and blocks come earlier,
in agent.flood, before a message is even parsed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agent.models import AlertState, Decision, Fault, RawMessage, Reason, Rejection
from agent.parse import topic_matches

if TYPE_CHECKING:
    # Annotations only: settings imports Allowlist from here, so no run-time import back.
    from agent.settings import Route

# RFC 5321 4.5.3.1: local part at most 64 octets, domain at most 255. Deliberately strict:
# recipients come only from the configuration, and nothing exotic is needed for internal
# addresses.
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,255}$")


def check_address(value: str) -> str:
    """A bare internal mailbox address (no display name), normalised to lower-case domain."""
    if not _ADDRESS_RE.match(value) or ".." in value or value.endswith("."):
        raise ValueError(f"{value!r} is not a plain e-mail address like ops@example.com")
    local, domain = value.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


class Allowlist:
    """Recipients we may mail: the mirror of the site firewall's 'internal addresses only' rule."""

    def __init__(self, domains: list[str], addresses: list[str]) -> None:
        self._exact = frozenset(d for d in domains if not d.startswith("*."))
        self._suffixes = tuple(d[1:] for d in domains if d.startswith("*."))
        self._addresses = frozenset(addresses)

    def allows(self, address: str) -> bool:
        try:
            normalised = check_address(address)
        except ValueError:
            return False
        domain = normalised.rsplit("@", 1)[1]
        return (
            normalised in self._addresses
            or domain in self._exact
            or (bool(self._suffixes) and domain.endswith(self._suffixes))
        )


class Policy:
    """Maps a parsed message to a Decision: pending (with recipients), suppressed or rejected."""

    def __init__(self, routes: list[Route], allowlist: Allowlist) -> None:
        # Split and checked once, not per message. Config validation already refused
        # recipients outside the allowlist; filtering again keeps the rule local and total.
        self._routes = [
            (
                route.min_severity.rank,
                [flt.split("/") for flt in route.topics],
                [addr for addr in route.to if allowlist.allows(addr)],
            )
            for route in routes
        ]

    def decide(self, raw: RawMessage, parsed: Fault | Rejection) -> Decision:
        if isinstance(parsed, Rejection):
            return Decision.rejected(raw, parsed.reason, parsed.detail, parsed.uid)
        recipients = self.recipients_for(raw.topic, parsed)
        if not recipients:
            return Decision.suppressed(
                raw, parsed, Reason.NO_ROUTE, "no route matches this topic at this severity"
            )
        return Decision(
            raw=raw, fault=parsed, state=AlertState.PENDING, recipients=recipients, uid=parsed.uid
        )

    def recipients_for(self, topic: str, fault: Fault) -> tuple[str, ...]:
        """Union of the recipients of every matching route, in config order, allowlisted only."""
        levels = topic.split("/")
        found: dict[str, None] = {}
        for min_rank, filters, recipients in self._routes:
            if fault.severity.rank > min_rank:
                continue
            if any(topic_matches(flt, levels) for flt in filters):
                found.update(dict.fromkeys(recipients))
        return tuple(found)
