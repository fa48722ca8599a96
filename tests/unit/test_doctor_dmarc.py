"""doctor.dmarc: the From domain's DMARC policy and whether our mail can align."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.doctor.dmarc import dmarc_checks, org_domain_guess
from agent.doctor.result import Check, Status
from agent.settings import Settings, load_settings
from tests.harness.dns import CannedLookups
from tests.unit.conftest import base_config


def dmarc(settings: Settings, *records: str) -> Check:
    """The DMARC line with records published at _dmarc.example.com (none when not given)."""
    lookups = CannedLookups(txt={"_dmarc.example.com": list(records)} if records else {})
    (check,) = asyncio.run(dmarc_checks(settings, lookups)).checks
    return check


def test_policy_and_alignment_modes_are_reported(settings: Settings) -> None:
    """p=, adkim and aspf are spelt out; without [dkim] a policy other than none is a WARN,
    as only SPF can align."""
    check = dmarc(settings, "v=DMARC1; p=none; aspf=s")
    assert check.status is Status.OK
    assert check.detail == (
        "p=none, adkim=relaxed, aspf=strict; no DKIM: only SPF can align (strict)"
    )
    strict = dmarc(settings, "v=DMARC1; p=reject")
    assert strict.status is Status.WARN and strict.fix.startswith("configure [dkim]: with p=reject")


def test_missing_duplicate_and_policy_less_records(settings: Settings) -> None:
    """No record is a WARN with one to publish; two are a FAIL; no valid p= a WARN."""
    missing = dmarc(settings)
    assert missing.status is Status.WARN
    assert missing.fix.startswith('publish _dmarc.example.com. IN TXT "v=DMARC1; p=none;')
    two = dmarc(settings, "v=DMARC1; p=none", "v=DMARC1; p=reject")
    assert two.status is Status.FAIL and "receivers ignore them all" in two.detail
    no_policy = dmarc(settings, "v=DMARC1; rua=mailto:d@example.com")
    assert no_policy.status is Status.WARN and "has no valid p=" in no_policy.detail


def test_a_subdomain_falls_back_to_the_organisational_domain(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """For gw@alerts.example.com the record at _dmarc.example.com applies, and the line says
    it was found at the guessed organisational domain."""
    assert org_domain_guess("alerts.example.com") == "example.com"
    assert org_domain_guess("example.com") == "example.com"
    doc = base_config(tmp_path)
    doc["smtp"]["from"] = "Gateway <gw@alerts.example.com>"
    doc["policy"]["allowed_domains"] = ["example.com", "alerts.example.com"]
    settings = load_settings(write_config(doc))
    lookups = CannedLookups(txt={"_dmarc.example.com": ["v=DMARC1; p=none"]})
    (check,) = asyncio.run(dmarc_checks(settings, lookups)).checks
    assert check.status is Status.OK and "the guessed organisational domain" in check.detail
    assert [name for name, _ in lookups.asked] == [
        "_dmarc.alerts.example.com",
        "_dmarc.example.com",
    ]
