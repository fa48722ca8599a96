"""`faultmail doctor`: is this gateway ready to turn faults into mail? One line per check.

Each check says OK, WARN or FAIL, what it saw, and for WARN/FAIL the fix in one line. The
families, one module each:

- local:      config: the file validates; secret files readable by others. state dir: exists
              (or can be created) and is writable. database: read-only open, `PRAGMA
              quick_check`, schema version against SCHEMA_VERSION. disk: free space. metrics
              textfile (when set): its directory not writable by others without the sticky bit
- broker:     TCP, TLS (verified, days to expiry), login, QoS 1 subscription to mqtt.topics
              (client id + "-doctor" on a clean session: the daemon's session is left alone)
- group:      ([cluster] shared or standby; one OK line when single) after the broker: shared
              subscriptions offered, the members' retained status, the standby lease holder,
              another member using this instance name
- relay:      TCP, STARTTLS offered (security = "starttls"), certificate verified with the
              daemon's TLS policy (host name, days to expiry), what EHLO advertised (SIZE,
              PIPELINING, AUTH, SMTPUTF8), AUTH accepted with the submitter's login; then QUIT.
              No mail is ever sent, and credentials only ever go over verified TLS.
- certs:      the wording of certificate expiry and TLS failures, shared by broker and relay
- dkim, spf, dmarc: DKIM key(s) against the TXT record at selector._domainkey.domain, SPF for
              the From domain (evaluated for this gateway's address when known), DMARC policy
              and alignment; through `resolver` (dnspython, the server given or the system's)
- clock:      against the date in the relay's greeting where it has one, else the kernel's
              NTP status; a clock before a certificate's start is always a FAIL

Exit code (`exit_code`): 0 when nothing FAILed (WARNs included), 1 when anything did; `main`
returns 2 when the configuration itself is invalid (nothing else could be checked).
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from agent.doctor.broker import broker_checks
from agent.doctor.clock import clock_check, kernel_clock_synced
from agent.doctor.dkim import dkim_checks
from agent.doctor.dmarc import dmarc_checks
from agent.doctor.group import group_checks
from agent.doctor.local import (
    config_check,
    database_check,
    disk_check,
    state_dir_check,
    textfile_check,
)
from agent.doctor.relay import greeting_time, relay_checks
from agent.doctor.resolver import Resolver
from agent.doctor.result import Check, Group, Status, fail, guard, guard_local
from agent.doctor.spf import spf_checks
from agent.errors import ConfigError
from agent.settings import Settings, load_settings
from agent.settings.loading import example_config

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAIL",
    "EXIT_OK",
    "Check",
    "Status",
    "exit_code",
    "format_checks",
    "greeting_time",
    "kernel_clock_synced",
    "main",
    "parse_resolver",
    "run",
    "run_checks",
]

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def main(
    config_path: Path,
    *,
    resolver: str | None = None,
    timeout: float = 5.0,
    out: TextIO | None = None,
) -> int:
    """`faultmail doctor [--config PATH] [--resolver HOST[:PORT]] [--timeout S]`.

    Prints the checks and returns the exit code: 0 nothing failed, 1 a check failed, 2 the
    configuration is invalid (then only that is reported).
    """
    stream = out if out is not None else sys.stdout
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        checks = [
            fail(
                "config",
                f"{key}: {text}",
                f"edit {key} in {config_path} (every key is documented in "
                f"{example_config(config_path)}), then run `faultmail doctor` again",
            )
            for key, text in exc.problems
        ]
        print(format_checks(checks), file=stream)
        return EXIT_CONFIG
    try:
        host, port = parse_resolver(resolver) if resolver else (None, 53)
    except ValueError as exc:
        print(
            f"faultmail: --resolver {resolver}: {exc}; give an IP address [and :PORT]", file=stream
        )
        return EXIT_CONFIG
    checks = run(settings, resolver=host, resolver_port=port, timeout=timeout, config=config_path)
    print(format_checks(checks), file=stream)
    return exit_code(checks)


def run(
    settings: Settings,
    *,
    resolver: str | None = None,
    resolver_port: int = 53,
    timeout: float = 5.0,
    config: Path | None = None,
) -> list[Check]:
    """`run_checks` for synchronous callers (the CLI)."""
    return asyncio.run(
        run_checks(
            settings,
            resolver=resolver,
            resolver_port=resolver_port,
            timeout=timeout,
            config=config,
        )
    )


async def run_checks(
    settings: Settings,
    *,
    resolver: str | None = None,
    resolver_port: int = 53,
    timeout: float = 5.0,
    config: Path | None = None,
) -> list[Check]:
    """Every check, in a fixed order. Network checks run concurrently; each network step
    (connect, TLS handshake, each SMTP command, each DNS query) waits at most timeout seconds.

    resolver: the DNS server to ask (an IP address) and resolver_port its port; None for the
    system resolver (/etc/resolv.conf).
    """
    local = [
        guard_local("config", lambda: config_check(settings, config)),
        guard_local("state dir", lambda: state_dir_check(settings)),
        guard_local("database", lambda: database_check(settings)),
        guard_local("disk", lambda: disk_check(settings)),
    ]
    if settings.health.metrics_textfile:
        local.append(guard_local("metrics textfile", lambda: textfile_check(settings)))
    lookups = Resolver(resolver, resolver_port, timeout)
    (broker, cluster), relay, dkim, dmarc = await asyncio.gather(
        _broker_then_group(settings, timeout),
        guard("relay", relay_checks(settings, timeout)),
        guard("DKIM", dkim_checks(settings, lookups)),
        guard("DMARC", dmarc_checks(settings, lookups)),
    )
    # SPF waits for the relay check: it evaluates the address this gateway connected from.
    spf = await guard("SPF", spf_checks(settings, lookups, relay.facts.local_address))
    clock = clock_check([relay.facts, broker.facts])
    groups = (broker, cluster, relay, dkim, spf, dmarc)
    return [*local, *(c for group in groups for c in group.checks), clock]


async def _broker_then_group(settings: Settings, timeout: float) -> tuple[Group, Group]:
    """The group checks talk to the broker only once the broker checks have passed."""
    broker = await guard("broker", asyncio.to_thread(broker_checks, settings, timeout))
    cluster = await guard("group", asyncio.to_thread(group_checks, settings, timeout, broker))
    return broker, cluster


def format_checks(checks: Sequence[Check]) -> str:
    """Aligned lines ``STATUS  name  detail``, with ``fix: ...`` under each WARN and FAIL."""
    width = max((len(c.name) for c in checks), default=0)
    indent = " " * (6 + width + 2)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<6}{check.name:<{width}}  {check.detail}")
        if check.status is not Status.OK and check.fix:
            lines.append(f"{indent}fix: {check.fix}")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when no check FAILed (WARNs do not change it), 1 otherwise."""
    return EXIT_FAIL if any(c.status is Status.FAIL for c in checks) else EXIT_OK


def parse_resolver(value: str) -> tuple[str, int]:
    """``127.0.0.1``, ``127.0.0.1:5353``, ``::1`` or ``[::1]:5353`` → (address, port)."""
    text = value.strip()
    port = 53
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        address = text
    ipaddress.ip_address(address)  # dnspython wants an address, not a name
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return address, port
