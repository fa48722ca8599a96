"""Hostile configurations (routing tricks in addresses, allowlist entries covering a public
suffix, numbers without bounds, runbook links that are not web links) are refused by
`faultmail config check` with exit 2, naming the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import DaemonError

pytestmark = pytest.mark.integration

EXIT_CONFIG = 2
OPS = [{"topics": ["devices/+/fault"], "min_severity": "info", "to": ["ops@example.com"]}]


def _route_to(address: str) -> list[dict[str, Any]]:
    return [{"topics": ["devices/+/fault"], "min_severity": "info", "to": [address]}]


# (daemon_config keyword arguments, the key named, a word of the fix)
ROUTING_TRICKS: list[tuple[dict[str, Any], str, str]] = [
    ({"routes": _route_to("ops%evil.example@example.com")}, "routes[0].to", "percent hack"),
    ({"routes": _route_to("evil.example!ops@example.com")}, "routes[0].to", "bang path"),
    ({"routes": _route_to('"ops@evil.example"@example.com')}, "routes[0].to", "quoted"),
    ({"routes": _route_to("@relay.example:ops@example.com")}, "routes[0].to", "source route"),
    ({"policy": {"allowed_domains": ["*.com"]}}, "policy.allowed_domains", "public suffix"),
    ({"policy": {"allowed_domains": ["com"]}}, "policy.allowed_domains", "public suffix"),
    (
        {"policy": {"allowed_domains": ["example.com", "*.co.uk"]}},
        "policy.allowed_domains",
        "public suffix",
    ),
    (
        {"policy": {"allowed_domains": ["example.com", ".corp.example"]}},
        "policy.allowed_domains",
        "empty label",
    ),
    (
        {"policy": {"allowed_recipients": ["ops@.corp.example"]}},
        "policy.allowed_recipients",
        "empty label",
    ),
    (
        {"flood": {"notify": ["sec%evil.example@example.com"]}},
        "flood.notify",
        "percent hack",
    ),
]

UNBOUNDED_NUMBERS: list[tuple[dict[str, Any], str, str]] = [
    ({"mqtt": {"session_expiry": 2**32}}, "mqtt.session_expiry", "4294967295"),
    ({"flood": {"rate": float("inf")}}, "flood.rate", "finite"),
    ({"flood": {"block_window": float("inf")}}, "flood.block_window", "finite"),
    ({"flood": {"rate": float("nan")}}, "flood.rate", "finite"),
    ({"flood": {"burst": 2**63 - 1}}, "flood.burst", "less than or equal"),
    ({"delivery": {"max_age": float("inf")}}, "delivery.max_age", "finite"),
    ({"extra": {"outbox": {"keep_days": float("inf")}}}, "outbox.keep_days", "finite"),
    ({"mail": {"digest_threshold": 2**63 - 1}}, "mail.digest_threshold", "less than or equal"),
]

RUNBOOK_LINKS: list[tuple[dict[str, Any], str, str]] = [
    (
        {"mail": {"runbook_default": "javascript:alert(document.cookie)//{code}"}},
        "mail.runbook_default",
        "https://",
    ),
    ({"mail": {"runbooks": {"E042": "javascript:alert(1)"}}}, "mail.runbooks", "https://"),
]


def _check_refused(
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    cases: list[tuple[dict[str, Any], str, str]],
) -> None:
    for index, (kwargs, key, fix) in enumerate(cases):
        path = daemon_config(name=f"hostile-{index}.toml", **kwargs)
        result = daemon(path, start=False).cli("config", "check")
        assert result.returncode == EXIT_CONFIG, (kwargs, result.stdout, result.stderr)
        assert f"  {key}: " in result.stderr and fix in result.stderr, (kwargs, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr


def test_config_check_refuses_routing_tricks_and_public_suffixes(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """Percent hack, bang path, quoted local part, source route, empty labels and allowlist
    entries at or above a public suffix each make `config check` exit 2 naming the key."""
    _check_refused(daemon, daemon_config, ROUTING_TRICKS)


def test_config_check_refuses_numbers_without_bounds(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A session expiry MQTT cannot encode, inf and nan windows and rates, and counts past any
    sensible size each make `config check` exit 2 naming the key."""
    _check_refused(daemon, daemon_config, UNBOUNDED_NUMBERS)


def test_config_check_refuses_runbook_links_that_are_not_web_links(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """A javascript: runbook link, default or per code, makes `config check` exit 2."""
    _check_refused(daemon, daemon_config, RUNBOOK_LINKS)


def test_daemon_refuses_to_start_with_a_percent_hack_recipient(
    daemon: DaemonFactory, daemon_config: DaemonConfigFactory
) -> None:
    """The daemon itself exits 2 before READY=1 with the key in its log: no mail can leave for
    a percent-hack recipient."""
    dm = daemon(daemon_config(routes=_route_to("ops%evil.example@example.com")), start=False)
    with pytest.raises(DaemonError, match="exited with 2"):
        dm.start()
    assert dm.returncode == EXIT_CONFIG
    assert "routes[0].to" in dm.log_text() and "Traceback" not in dm.log_text()


def test_the_shipped_limits_load(daemon: DaemonFactory, daemon_config: DaemonConfigFactory) -> None:
    """The largest values the bounds allow (session expiry 2^32-1 included) pass `config check`."""
    path = daemon_config(
        mqtt={"session_expiry": 2**32 - 1},
        flood={"rate": 10_000.0, "burst": 1_000_000, "block_window": 86_400},
        routes=OPS,
    )
    result = daemon(path, start=False).cli("config", "check")
    assert result.returncode == 0, result.stderr
