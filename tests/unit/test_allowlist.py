"""The recipient allowlist against routing tricks: percent hack, bang paths, quoted local parts,
source routes, empty labels and entries that cover a whole public suffix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, PolicyRefusal
from agent.policy import Allowlist, check_address
from agent.settings import Settings, load_settings
from agent.submit import SmtpSubmitter
from tests.unit.conftest import base_config

Writer = Callable[[dict[str, Any]], Path]

# Each would reach a mailbox outside the company through a relay that honours it, or is not
# the address it looks like.
ROUTING_TRICKS = [
    pytest.param("ops%evil.example@example.com", "percent", id="percent-hack"),
    pytest.param("evil.example!ops@example.com", "bang", id="bang-path"),
    pytest.param('"ops@evil.example"@example.com', "quoted", id="quoted-local-part"),
    pytest.param('"ops"@example.com', "quoted", id="quoted-plain"),
    pytest.param("@relay.example:ops@example.com", "source route", id="source-route"),
    pytest.param("@a.example,@b.example:ops@example.com", "source route", id="source-route-2"),
    pytest.param("ops@evil.example@example.com", "plain", id="two-ats"),
    pytest.param("ops @example.com", "plain", id="space"),
    pytest.param("ops\t@example.com", "plain", id="tab"),
    pytest.param("ops@example.com\n", "plain", id="trailing-newline"),
    pytest.param("ops@example.com\r\n", "plain", id="trailing-crlf"),
    pytest.param("ops\x00@example.com", "plain", id="nul"),
    pytest.param("ops\u2028@example.com", "plain", id="line-separator"),
    pytest.param(".ops@example.com", "dot", id="leading-dot"),
    pytest.param("ops.@example.com", "dot", id="trailing-dot-local"),
    pytest.param("ops@.corp.example", "empty label", id="leading-empty-label"),
    pytest.param("ops@plant..corp.example", "empty label", id="inner-empty-label"),
    pytest.param("ops@example.com.", "empty label", id="trailing-dot-domain"),
    pytest.param("ops@-plant.corp.example", "hyphen", id="label-hyphen"),
    pytest.param("ops@localhost", "fully qualified", id="dotless-domain"),
    pytest.param("ops@[192.0.2.1]", "plain", id="address-literal"),
]


@pytest.mark.parametrize(("address", "why"), ROUTING_TRICKS)
def test_check_address_refuses_routing_tricks(address: str, why: str) -> None:
    """An address that a relay could route elsewhere is refused, saying why and what to use."""
    with pytest.raises(ValueError, match=why) as info:
        check_address(address)
    assert "ops@example.com" in str(info.value) or "like" in str(info.value)


@pytest.mark.parametrize(("address", "why"), ROUTING_TRICKS)
def test_allowlist_refuses_routing_tricks_at_run_time(address: str, why: str) -> None:
    """The run-time check before RCPT TO refuses them too, even where the domain is listed."""
    allow = Allowlist(["example.com", "*.corp.example"], [])
    assert not allow.allows(address), why


def test_ordinary_addresses_still_pass() -> None:
    """Plain internal addresses (dots, plus, hyphen, apostrophe, subdomains) are accepted."""
    allow = Allowlist(["example.com", "*.corp.example", "example.co.uk"], [])
    for address in [
        "ops@example.com",
        "first.last+alerts@example.com",
        "o'brien@example.com",
        "on-call_2@plant.corp.example",
        "ops@example.co.uk",
    ]:
        assert check_address(address) == address
        assert allow.allows(address), address


def test_submitter_refuses_a_percent_hack_recipient_before_connecting(settings: Settings) -> None:
    """A queued mail to ops%evil.example@example.com is refused before RCPT TO; no connection."""
    # mail.example.com does not resolve here: reaching the network would raise something else.
    sub = SmtpSubmitter(settings.smtp, Allowlist(["example.com"], []), "gw.test")
    with pytest.raises(PolicyRefusal, match=r"ops%evil\.example"):
        asyncio.run(sub.submit("gw@example.com", ["ops%evil.example@example.com"], b"x"))


PUBLIC_SUFFIX_ENTRIES = [
    "com",
    "*.com",
    "COM",
    "localhost",
    "co.uk",
    "*.co.uk",
    "com.au",
    "*.org.uk",
    "co.jp",
]


@pytest.mark.parametrize("entry", PUBLIC_SUFFIX_ENTRIES)
def test_allowed_domains_refuses_a_public_suffix(
    tmp_path: Path, write_config: Writer, entry: str
) -> None:
    """An entry at or above a public suffix (any company's mail) stops startup, naming the key."""
    doc = base_config(tmp_path)
    doc["policy"] = {"allowed_domains": ["example.com", entry]}
    problem = _problems(write_config(doc))["policy.allowed_domains"]
    assert entry in problem and "public suffix" in problem and "example.com" in problem, problem


@pytest.mark.parametrize(
    "entry",
    [".corp.example", "corp..example", "corp.example.", "*.", "*", "**.example.com", "*.*.example"],
)
def test_allowed_domains_refuses_empty_labels_and_stray_wildcards(
    tmp_path: Path, write_config: Writer, entry: str
) -> None:
    """Empty labels and wildcards anywhere but a leading '*.' are refused, naming the key."""
    doc = base_config(tmp_path)
    doc["policy"] = {"allowed_domains": ["example.com", entry]}
    problem = _problems(write_config(doc))["policy.allowed_domains"]
    assert repr(entry) in problem and "example.com" in problem, problem


def test_allowlist_refuses_a_public_suffix_when_built_directly() -> None:
    """Allowlist itself refuses '*.com', so no caller can build one that admits any company."""
    with pytest.raises(ValueError, match="public suffix"):
        Allowlist(["*.com"], [])


@pytest.mark.parametrize(
    ("section", "key", "address"),
    [
        ("routes", "routes[0].to", "ops%evil.example@example.com"),
        ("routes", "routes[0].to", "evil.example!ops@example.com"),
        ("policy", "policy.allowed_recipients", "ops%evil.example@example.com"),
        ("flood", "flood.notify", "sec!evil.example@example.com"),
        ("smtp", "smtp.from", "Gateway <gw%evil.example@example.com>"),
    ],
)
def test_routing_tricks_in_the_config_name_their_key(
    tmp_path: Path, write_config: Writer, section: str, key: str, address: str
) -> None:
    """A percent hack or bang path anywhere an address is configured stops startup at its key."""
    doc = base_config(tmp_path)
    if section == "routes":
        doc["routes"][0]["to"] = [address]
    elif section == "policy":
        doc["policy"]["allowed_recipients"] = [address]
    elif section == "flood":
        doc["flood"] = {"notify": [address]}
    else:
        doc["smtp"]["from"] = address
    problems = _problems(write_config(doc))
    assert key in problems and "evil.example" in problems[key], problems


def test_wildcard_of_a_company_domain_under_a_public_suffix_loads(
    tmp_path: Path, write_config: Writer
) -> None:
    """*.example.co.uk and example.co.uk are a company's own domains and load."""
    doc = base_config(tmp_path)
    doc["policy"] = {"allowed_domains": ["example.com", "example.co.uk", "*.Example.co.uk"]}
    settings = load_settings(write_config(doc))
    assert settings.policy.allowed_domains == ["example.com", "example.co.uk", "*.example.co.uk"]
    assert settings.allowlist.allows("ops@plant.example.co.uk")
    assert not settings.allowlist.allows("ops@evil.co.uk")


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return dict(info.value.problems)
