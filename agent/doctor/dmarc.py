"""The DMARC check: the From domain's policy (p=), its alignment modes, and whether the mail
we send can align: through DKIM (d= is the From domain) or, without [dkim], SPF alone."""

from __future__ import annotations

from agent.doctor.resolver import LookupFailed, Lookups, lookup_warn, tags
from agent.doctor.result import Group, fail, ok, warn
from agent.settings import Settings


def org_domain_guess(domain: str) -> str:
    """The last two labels: right for example.com-style domains, wrong for example.co.uk
    (that needs the public suffix list), which is why the check says when it used it."""
    labels = domain.split(".")
    return ".".join(labels[-2:]) if len(labels) > 2 else domain


async def dmarc_checks(settings: Settings, resolver: Lookups) -> Group:
    """One line: the record at _dmarc.<From domain> (or its organisational domain)."""
    domain = settings.smtp.sender_domain
    name = "DMARC"
    looked = [domain]
    if org_domain_guess(domain) != domain:
        # RFC 7489 6.6.3: without a record at the From domain, receivers ask the
        # organisational domain.
        looked.append(org_domain_guess(domain))
    try:
        found: list[str] = []
        where = ""
        for candidate in looked:
            records = await resolver.txt(f"_dmarc.{candidate}")
            found = [r for r in records or [] if r.replace(" ", "").upper().startswith("V=DMARC1")]
            if found:
                where = f"_dmarc.{candidate}"
                break
    except LookupFailed as exc:
        return Group([lookup_warn(name, resolver, exc)])
    if not found:
        return Group(
            [
                warn(
                    name,
                    f"no DMARC record at _dmarc.{domain}: receivers apply their own policy",
                    f'publish _dmarc.{domain}. IN TXT "v=DMARC1; p=none; '
                    f'rua=mailto:dmarc@{domain}" and tighten p= once reports look clean',
                )
            ]
        )
    if len(found) > 1:
        return Group(
            [
                fail(
                    name,
                    f"{len(found)} DMARC records at {where}: receivers ignore them all",
                    "keep exactly one v=DMARC1 record",
                )
            ]
        )
    record = tags(found[0])
    policy = record.get("p", "")
    modes = {"r": "relaxed", "s": "strict"}
    adkim = modes.get(record.get("adkim", "r").lower(), record.get("adkim", "?"))
    aspf = modes.get(record.get("aspf", "r").lower(), record.get("aspf", "?"))
    if policy.lower() not in ("none", "quarantine", "reject"):
        return Group(
            [
                warn(
                    name,
                    f"{where} has no valid p= ({found[0][:80]})",
                    f"add p=none, p=quarantine or p=reject to the record at {where}",
                )
            ]
        )
    dkim = settings.dkim
    if dkim is not None:
        # settings require dkim.domain == From domain, which satisfies strict and relaxed.
        alignment = f"DKIM d={dkim.domain} aligned ({adkim})"
    else:
        alignment = f"no DKIM: only SPF can align ({aspf})"
    where_note = (
        f" (found at {where}, the guessed organisational domain)"
        if where != f"_dmarc.{domain}"
        else ""
    )
    detail = f"p={policy}, adkim={adkim}, aspf={aspf}; {alignment}{where_note}"
    if dkim is None and policy.lower() != "none":
        return Group(
            [
                warn(
                    name,
                    detail,
                    "configure [dkim]: with p=" + policy + " unsigned mail fails DMARC wherever "
                    "SPF does not pass for the relay",
                )
            ]
        )
    return Group([ok(name, detail)])
