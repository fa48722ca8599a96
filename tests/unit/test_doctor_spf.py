"""doctor.spf: RFC 7208 evaluation against canned records (no DNS), and the SPF line it
gives for this gateway's address."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping

from agent.doctor.result import Status
from agent.doctor.spf import SPF_LOOKUP_LIMIT, Budget, evaluate, spf_checks
from agent.settings import Settings
from tests.harness.dns import CannedLookups

GATEWAY = ipaddress.ip_address("192.0.2.10")


def spf(
    records: Mapping[str, str | list[str]],
    ip: str = "192.0.2.10",
    *,
    addresses: Mapping[str, list[str]] | None = None,
    mx: Mapping[str, list[str]] | None = None,
) -> tuple[str, str]:
    """Evaluate example.com for ip with records as its TXT records (one string: one record)."""
    txt = {name: [v] if isinstance(v, str) else v for name, v in records.items()}
    lookups = CannedLookups(txt=txt, addresses=addresses, mx=mx)
    domain = "example.com"
    return asyncio.run(evaluate(lookups, ipaddress.ip_address(ip), domain))


def test_ip4_network_that_holds_the_address_passes() -> None:
    """An ip4 network containing the address passes and names the deciding term."""
    assert spf({"example.com": "v=spf1 ip4:192.0.2.0/24 -all"}) == (
        "pass",
        "ip4:192.0.2.0/24 at example.com",
    )


def test_ip6_network_matches_only_ipv6_addresses() -> None:
    """ip6 matches an IPv6 address inside it; an IPv4 address falls through to -all."""
    record = {"example.com": "v=spf1 ip6:2001:db8::/32 -all"}
    assert spf(record, ip="2001:db8::1")[0] == "pass"
    assert spf(record, ip="192.0.2.10") == ("fail", "-all at example.com")


def test_all_qualifiers_give_their_results() -> None:
    """-all is fail, ~all softfail, ?all neutral, +all and bare all pass."""
    for qualifier, result in (("-", "fail"), ("~", "softfail"), ("?", "neutral"), ("+", "pass")):
        assert spf({"example.com": f"v=spf1 {qualifier}all"})[0] == result
    assert spf({"example.com": "v=spf1 all"})[0] == "pass"


def test_no_matching_term_and_no_all_is_neutral() -> None:
    """A record whose terms all miss and that has no all is neutral (RFC 7208 4.7)."""
    assert spf({"example.com": "v=spf1 ip4:198.51.100.0/24"}) == (
        "neutral",
        "no term matched at example.com",
    )


def test_include_passes_when_the_included_record_passes() -> None:
    """include: counts as a match only when the included record passes."""
    records = {
        "example.com": "v=spf1 include:_spf.relay.net -all",
        "_spf.relay.net": "v=spf1 ip4:192.0.2.0/24 -all",
    }
    assert spf(records) == ("pass", "include:_spf.relay.net at example.com")
    records["_spf.relay.net"] = "v=spf1 ip4:198.51.100.0/24 -all"
    assert spf(records) == ("fail", "-all at example.com")


def test_include_without_spf_record_or_answer_is_an_error() -> None:
    """include: of a domain without SPF is permerror; one whose lookup fails is temperror."""
    assert spf({"example.com": "v=spf1 include:nothing.test -all"}) == (
        "permerror",
        "include:nothing.test has no SPF record",
    )
    lookups = CannedLookups(
        txt={"example.com": ["v=spf1 include:down.test -all"]}, failing=["down.test"]
    )
    result, why = asyncio.run(evaluate(lookups, GATEWAY, "example.com"))
    assert result == "temperror" and "down.test" in why


def test_a_with_cidr_matches_the_network_of_the_host() -> None:
    """a:host/24 matches any address in the /24 of host's A record; bare a uses the domain."""
    addresses = {"relay.example.net": ["192.0.2.1"], "example.com": ["192.0.2.10"]}
    record = {"example.com": "v=spf1 a:relay.example.net/24 -all"}
    assert spf(record, addresses=addresses)[0] == "pass"
    assert spf({"example.com": "v=spf1 a:relay.example.net -all"}, addresses=addresses)[0] == (
        "fail"
    )
    assert spf({"example.com": "v=spf1 a -all"}, addresses=addresses) == (
        "pass",
        "a at example.com",
    )


def test_mx_matches_the_addresses_of_the_mx_hosts() -> None:
    """mx follows the MX host names to their addresses."""
    mx = {"example.com": ["mx1.example.com", "mx2.example.com"]}
    addresses = {"mx1.example.com": ["198.51.100.1"], "mx2.example.com": ["192.0.2.10"]}
    assert spf({"example.com": "v=spf1 mx -all"}, mx=mx, addresses=addresses) == (
        "pass",
        "mx at example.com",
    )


def test_redirect_uses_the_target_record_and_needs_one() -> None:
    """redirect= applies the target's record when no term matched; a target without SPF is
    permerror (RFC 7208 6.1)."""
    records = {
        "example.com": "v=spf1 redirect=_spf.example.com",
        "_spf.example.com": "v=spf1 ip4:192.0.2.0/24 -all",
    }
    assert spf(records) == ("pass", "ip4:192.0.2.0/24 at _spf.example.com")
    assert spf({"example.com": "v=spf1 redirect=nowhere.test"})[0] == "permerror"


def test_more_than_ten_lookups_is_a_permerror() -> None:
    """A chain of includes that needs an 11th DNS-querying term is permerror; 10 are fine."""

    def chain(length: int) -> dict[str, str | list[str]]:
        records: dict[str, str | list[str]] = {}
        for i in range(length):
            records[f"d{i}.test" if i else "example.com"] = f"v=spf1 include:d{i + 1}.test -all"
        records[f"d{length}.test"] = "v=spf1 ip4:192.0.2.10 -all"
        return records

    assert spf(chain(SPF_LOOKUP_LIMIT))[0] == "pass"
    assert spf(chain(SPF_LOOKUP_LIMIT + 1)) == ("permerror", "more than 10 DNS lookups")


def test_two_records_none_and_unknown_terms() -> None:
    """Two SPF records are permerror, none is none, an unknown mechanism permerror."""
    assert spf({"example.com": ["v=spf1 -all", "v=spf1 ~all"]})[0] == "permerror"
    assert spf({"example.com": "google-site-verification=abc"}) == (
        "none",
        "no SPF record at example.com",
    )
    assert spf({"example.com": "v=spf1 ipv4:192.0.2.10 -all"})[0] == "permerror"


def test_macros_and_ptr_are_noted_not_evaluated() -> None:
    """Macro terms and ptr never match; the budget notes them so the line can say so."""
    lookups = CannedLookups(txt={"example.com": ["v=spf1 exists:%{i}.spf.test ptr ~all"]})
    budget = Budget()
    result = asyncio.run(evaluate(lookups, GATEWAY, "example.com", budget))
    assert result == ("softfail", "~all at example.com")
    assert budget.notes == [
        "exists:%{i}.spf.test (macros are not evaluated)",
        "ptr (not evaluated)",
    ]


def test_spf_line_for_a_public_address_not_covered_is_a_warning(settings: Settings) -> None:
    """A public gateway address the record does not cover is a WARN whose fix is the ip4 term."""
    lookups = CannedLookups(txt={"example.com": ["v=spf1 ip4:192.0.2.0/24 -all"]})
    (check,) = asyncio.run(spf_checks(settings, lookups, "8.8.8.8")).checks
    assert check.status is Status.WARN and "gives fail" in check.detail
    assert "ip4:8.8.8.8" in check.fix


def test_spf_line_for_a_covered_or_private_address_is_ok(settings: Settings) -> None:
    """A covered address is OK ("allows this gateway"); a private one is OK as the relay's
    servers are what receivers see."""
    lookups = CannedLookups(txt={"example.com": ["v=spf1 ip4:192.0.2.0/24 -all"]})
    (covered,) = asyncio.run(spf_checks(settings, lookups, "192.0.2.10")).checks
    assert covered.status is Status.OK and "allows this gateway (192.0.2.10" in covered.detail
    (private,) = asyncio.run(spf_checks(settings, lookups, "10.1.2.3")).checks
    assert private.status is Status.OK and "10.1.2.3 is not public" in private.detail


def test_spf_line_when_the_lookup_fails_is_a_warning_naming_the_resolver(
    settings: Settings,
) -> None:
    """No answer for the From domain is a WARN (not FAIL) that names the server asked."""
    lookups = CannedLookups(failing=["example.com"])
    (check,) = asyncio.run(spf_checks(settings, lookups, "192.0.2.10")).checks
    assert check.status is Status.WARN and "canned records" in check.fix
