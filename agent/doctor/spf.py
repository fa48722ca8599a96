"""The SPF check: the From domain's record, and whether it lets this gateway's address send.

`evaluate` is RFC 7208 check_host() for the common terms (ip4, ip6, a, mx, include, exists,
redirect=, all with its qualifiers, the 10-lookup limit), written against the `Lookups`
protocol so tests run it on canned records. Macros and ptr are not evaluated: they are noted
in the result and count as not matching.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from agent.doctor.resolver import IPAddress, LookupFailed, Lookups, lookup_warn
from agent.doctor.result import Group, fail, ok, warn
from agent.settings import Settings

# RFC 7208 4.6.4: at most 10 DNS-querying terms per SPF evaluation.
SPF_LOOKUP_LIMIT = 10
# RFC 7208 4.6.4: an mx term looks at no more than 10 MX hosts.
_MX_LIMIT = 10
# Deeper include/redirect chains than this are a loop (the lookup limit ends them anyway).
_MAX_DEPTH = 10

_SPF_MECH = re.compile(r"^([+?~-]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?::(.*))?$", re.I)
_SPF_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
_SPF_RESULT = {"+": "pass", "": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass
class Budget:
    """Shared by one evaluation and its includes: DNS lookups spent, terms not evaluated."""

    lookups: int = 0
    notes: list[str] = field(default_factory=list)


class _SpfError(Exception):
    def __init__(self, result: str, why: str) -> None:
        self.result = result
        super().__init__(why)


def spf_records(records: list[str] | None) -> list[str]:
    """The v=spf1 records among a name's TXT records."""
    return [r for r in records or [] if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


def _split_cidr(arg: str) -> tuple[str, int | None, int | None]:
    """'example.com/24//64' → ('example.com', 24, 64)."""
    name, v6 = arg, None
    if "//" in name:
        name, _, v6_text = name.partition("//")
        v6 = int(v6_text)
    v4 = None
    if "/" in name:
        name, _, v4_text = name.partition("/")
        v4 = int(v4_text)
    return name, v4, v6


async def evaluate(
    resolver: Lookups,
    ip: IPAddress,
    domain: str,
    budget: Budget | None = None,
    depth: int = 0,
) -> tuple[str, str]:
    """RFC 7208 check_host() for the common terms: (result, the term that decided).

    Results: pass, fail, softfail, neutral, none, permerror, temperror. Macros and ptr are
    not evaluated (noted in the budget); they count as not matching.
    """
    budget = budget if budget is not None else Budget()
    if depth > _MAX_DEPTH:
        return "permerror", "include/redirect loop"
    try:
        spf = spf_records(await resolver.txt(domain))
    except LookupFailed as exc:
        return "temperror", str(exc)
    if not spf:
        return "none", f"no SPF record at {domain}"
    if len(spf) > 1:
        return "permerror", f"{len(spf)} SPF records at {domain}"
    redirect = ""
    try:
        for term in spf[0].split()[1:]:
            modifier = _SPF_MODIFIER.match(term)
            if modifier:
                if modifier.group(1).lower() == "redirect":
                    redirect = modifier.group(2)
                continue
            match = _SPF_MECH.match(term)
            if match is None:
                return "permerror", f"unknown term {term!r} at {domain}"
            if "%" in term:
                budget.notes.append(f"{term} (macros are not evaluated)")
                continue
            qualifier, mech, arg = match.group(1), match.group(2).lower(), match.group(3) or ""
            if await _matches(resolver, ip, domain, mech, arg, budget, depth):
                return _SPF_RESULT[qualifier], f"{term} at {domain}"
        if redirect:
            budget.lookups += 1
            if budget.lookups > SPF_LOOKUP_LIMIT:
                return "permerror", "more than 10 DNS lookups"
            result, term = await evaluate(resolver, ip, redirect, budget, depth + 1)
            # RFC 7208 6.1: a redirect to a domain without SPF record is a permerror.
            return ("permerror" if result == "none" else result), term
    except _SpfError as exc:
        return exc.result, str(exc)
    return "neutral", f"no term matched at {domain}"


async def _matches(
    resolver: Lookups,
    ip: IPAddress,
    domain: str,
    mech: str,
    arg: str,
    budget: Budget,
    depth: int,
) -> bool:
    if mech == "all":
        return True
    if mech in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            raise _SpfError("permerror", f"bad network {mech}:{arg}") from None
        return ip.version == network.version and ip in network
    budget.lookups += 1
    if budget.lookups > SPF_LOOKUP_LIMIT:
        raise _SpfError("permerror", "more than 10 DNS lookups")
    try:
        if mech == "include":
            result, term = await evaluate(resolver, ip, arg, budget, depth + 1)
            if result in ("temperror", "permerror"):
                raise _SpfError(result, term)
            if result == "none":
                raise _SpfError("permerror", f"include:{arg} has no SPF record")
            return result == "pass"
        if mech == "ptr":
            budget.notes.append("ptr (not evaluated)")
            return False
        if mech == "exists":
            return bool(await resolver.addresses(arg))
        name, v4, v6 = _split_cidr(arg)
        name = name or domain
        hosts = [name] if mech == "a" else (await resolver.mx(name))[:_MX_LIMIT]
        prefix = v4 if ip.version == 4 else v6
        for host in hosts:
            for address in await resolver.addresses(host):
                if address.version != ip.version:
                    continue
                bits = prefix if prefix is not None else address.max_prefixlen
                if ip in ipaddress.ip_network(f"{address}/{bits}", strict=False):
                    return True
        return False
    except LookupFailed as exc:
        raise _SpfError("temperror", str(exc)) from None


async def spf_checks(settings: Settings, resolver: Lookups, gateway_ip: str | None) -> Group:
    """The From domain's SPF record, evaluated for gateway_ip (this gateway's address on the
    relay connection; None when the relay could not be reached)."""
    domain = settings.smtp.sender_domain
    name = "SPF"
    suggestion = f'publish {domain}. IN TXT "v=spf1 include:<your relay\'s SPF domain> -all"'
    try:
        records = spf_records(await resolver.txt(domain))
    except LookupFailed as exc:
        return Group([lookup_warn(name, resolver, exc)])
    if not records:
        return Group(
            [
                warn(
                    name,
                    f"no SPF record for the From domain {domain}: the envelope sender cannot "
                    "pass SPF, so DMARC rests on DKIM alone",
                    suggestion,
                )
            ]
        )
    if len(records) > 1:
        return Group(
            [
                fail(
                    name,
                    f"{len(records)} SPF records at {domain}: receivers treat that as an error "
                    "(permerror)",
                    "merge them into one v=spf1 record",
                )
            ]
        )
    record = records[0]
    shown = record if len(record) <= 90 else record[:87] + "..."
    if re.search(r"(^|\s)\+?all(\s|$)", record, re.I):
        return Group(
            [
                warn(
                    name,
                    f'{domain}: "{shown}" ends in +all: every host on the internet passes SPF '
                    "for this domain",
                    'end the record with "-all" (or "~all") after the senders you use',
                )
            ]
        )
    if gateway_ip is None:
        return Group([ok(name, f'{domain}: "{shown}" (this gateway\'s address is unknown)')])
    try:
        ip = ipaddress.ip_address(gateway_ip.split("%")[0])
    except ValueError:
        return Group([ok(name, f'{domain}: "{shown}"')])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    budget = Budget()
    result, term = await evaluate(resolver, ip, domain, budget)
    notes = f"; {', '.join(budget.notes)}" if budget.notes else ""
    if result == "pass":
        return Group([ok(name, f'{domain}: "{shown}" allows this gateway ({ip}, {term}){notes}')])
    if result == "temperror":
        return Group(
            [lookup_warn(name, resolver, LookupFailed(f"while evaluating {domain}: {term}"))]
        )
    if result == "permerror":
        return Group(
            [
                fail(
                    name,
                    f'{domain}: "{shown}" is broken: {term}',
                    "fix the record: receivers treat a broken SPF record as an error",
                )
            ]
        )
    if not ip.is_global:
        return Group(
            [
                ok(
                    name,
                    f'{domain}: "{shown}"; this gateway\'s address {ip} is not public, so '
                    f"receivers check the relay's servers instead ({result} for {ip}){notes}",
                )
            ]
        )
    return Group(
        [
            warn(
                name,
                f'{domain}: "{shown}" gives {result} for this gateway\'s address {ip} '
                f"({term}){notes}",
                "fine if the relay sends from its own servers and the record includes them; "
                f"if mail leaves from this address, add ip{ip.version}:{ip} to the record",
            )
        ]
    )
