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

# RFC 5321 4.5.3.1.1 and 4.5.3.1.2: a local part of at most 64 octets, a domain of at most 255.
_LOCAL_MAX = 64
_DOMAIN_MAX = 255
# The local part is a Dot-string (RFC 5321 4.1.2) of atext (RFC 5322 3.2.3) without '%' and
# '!': relays that still honour the "percent hack" (user%host@relay) or UUCP bang paths
# (host!user@relay) forward such a mailbox to `host`, outside the company. Quoted local parts,
# source routes ("@relay:user@domain", RFC 5321 4.1.2, C.) and address literals are refused
# for the same reason: recipients come only from the configuration, and internal addresses
# need none of it.
_ATEXT = r"A-Za-z0-9#$&'*+/=?^_`{|}~-"
_LOCAL_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# RFC 1035 2.3.1 / RFC 1123 2.1: letters, digits and inner hyphens, 1-63 octets.
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Second-level labels under which country-code registries hand out domains to anyone (co.uk,
# com.au, co.jp, org.br, ac.nz, gov.in, ne.jp ...). An allowlist entry at that level (co.uk,
# *.co.uk) admits every company registered there. This is not the Public Suffix List (that
# would be a dependency to keep fresh); it catches the common registry levels under two-letter
# country codes, and a single label (com, uk, localhost) is refused whatever it is. A
# company's own domain under them (example.co.uk, *.example.co.uk) is fine.
_REGISTRY_SECOND_LEVELS = frozenset(
    {"ac", "co", "com", "edu", "go", "gob", "gouv", "gov", "govt", "ltd", "mil", "ne", "net"}
    | {"nhs", "nic", "nom", "or", "org", "plc", "sch"}
)
_FIX = "use a plain address like ops@example.com"


def _domain_problem(domain: str) -> str | None:
    """Why `domain` is not a fully qualified host name (empty labels, hyphens, length), or None."""
    labels = domain.split(".")
    if "" in labels:
        return f"domain {domain!r} has an empty label (a leading, trailing or doubled '.')"
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            if re.fullmatch(r"[A-Za-z0-9-]{1,63}", label):
                return f"domain label {label!r} starts or ends with a hyphen"
            return (
                f"domain label {label!r} is not 1-63 letters, digits and hyphens "
                "(no address literals, no other characters)"
            )
    if len(labels) < 2:
        # RFC 5321 2.3.5: only fully qualified names; a relay may complete a dotless one with
        # a search domain of its own choosing.
        return f"domain {domain!r} is not fully qualified (it has no '.')"
    if len(domain) > _DOMAIN_MAX:
        return f"domain is longer than {_DOMAIN_MAX} characters"
    return None


def check_address(value: str) -> str:
    """A bare internal mailbox address (no display name), normalised to lower-case domain.

    Raises ValueError saying what is wrong and what to write instead.
    """
    plain = f"{value!r} is not a plain e-mail address like ops@example.com"
    if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{plain}: it contains whitespace, a control or a non-ASCII character")
    if value.startswith("@"):
        raise ValueError(
            f"{value!r} is a source route (@relay:user@domain): a relay may forward it anywhere; "
            + _FIX
        )
    if '"' in value:
        raise ValueError(f"{value!r} has a quoted local part: it can hide another address; {_FIX}")
    if value.count("@") != 1:
        raise ValueError(f"{plain}: it must have exactly one '@'")
    local, domain = value.split("@")
    if "%" in local:
        host = local.rsplit("%", 1)[1]
        raise ValueError(
            f"{value!r}: '%' in the local part is the percent hack: a relay that honours it "
            f"delivers to {host}, outside the allowlist; {_FIX}"
        )
    if "!" in local:
        host = local.split("!", 1)[0]
        raise ValueError(
            f"{value!r}: '!' in the local part is a UUCP bang path: a relay that honours it "
            f"delivers to {host}, outside the allowlist; {_FIX}"
        )
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{plain}: a dot may not start, end or double in the local part")
    if not _LOCAL_RE.fullmatch(local) or len(local) > _LOCAL_MAX:
        raise ValueError(
            f"{plain}: the local part must be 1-{_LOCAL_MAX} letters, digits and "
            '".#$&\'*+/=?^_`{|}~-"'
        )
    problem = _domain_problem(domain)
    if problem:
        raise ValueError(f"{value!r}: {problem}; {_FIX}")
    return f"{local}@{domain.lower()}"


def check_allowed_domain(entry: str) -> str:
    """An allowlist domain entry (example.com, or *.corp.example for its subdomains), lower-cased.

    Refuses empty labels, wildcards anywhere but a leading '*.', and entries at or above a
    public suffix (com, *.com, co.uk, *.co.uk): each would admit other organisations' mail.
    """
    fix = "list your own domains, e.g. example.com or *.corp.example"
    wildcard = entry.startswith("*.")
    base = entry[2:] if wildcard else entry
    if "*" in base:
        raise ValueError(
            f"{entry!r}: a wildcard may only be a leading '*.' (for subdomains); {fix}"
        )
    if len(base.split(".")) == 1 and _LABEL_RE.fullmatch(base):
        problem: str | None = None  # a single valid label: refused below as a public suffix
    else:
        problem = _domain_problem(base)
    if problem:
        raise ValueError(f"{entry!r} is not a domain name: {problem}; {fix}")
    base = base.lower()
    labels = base.split(".")
    if len(labels) == 1 or (
        len(labels) == 2 and len(labels[1]) == 2 and labels[0] in _REGISTRY_SECOND_LEVELS
    ):
        level = "a single label: a top-level domain" if len(labels) == 1 else "a registry level"
        raise ValueError(
            f"{entry!r} is at or above a public suffix ({base} is {level}): it would admit the "
            f"mail of any organisation registered under it; {fix}"
        )
    return f"*.{base}" if wildcard else base


class Allowlist:
    """Recipients we may mail: the mirror of the site firewall's 'internal addresses only' rule.

    Entries are checked here too (check_allowed_domain, check_address), so no caller can build
    an allowlist that admits a public suffix or an address a relay would route elsewhere.
    """

    def __init__(self, domains: list[str], addresses: list[str]) -> None:
        checked = [check_allowed_domain(d) for d in domains]
        self._exact = frozenset(d for d in checked if not d.startswith("*."))
        self._suffixes = tuple(d[1:] for d in checked if d.startswith("*."))
        self._addresses = frozenset(check_address(a) for a in addresses)

    def allows(self, address: str) -> bool:
        """Whether `address` may be a recipient; anything check_address refuses never is."""
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
