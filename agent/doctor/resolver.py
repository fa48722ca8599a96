"""DNS lookups for the DKIM, SPF and DMARC checks: a small protocol (TXT, addresses, MX) the
checks are written against, and its dnspython implementation.

Tests pass a fake with canned records instead of a DNS server. A name without such records is
None / [] (NXDOMAIN and NODATA alike); anything else that stops an answer is LookupFailed,
which the checks report as a WARN naming the server that was asked.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver

from agent.doctor.result import Check, warn

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class LookupFailed(Exception):
    """No answer (timeout, SERVFAIL, no resolver): the record may exist, we cannot tell."""


class Lookups(Protocol):
    """What the DNS checks ask; every method raises LookupFailed when there is no answer."""

    where: str  # which server is asked, for the fix line

    async def txt(self, name: str) -> list[str] | None:
        """The TXT records of name, each joined into one string; None if there are none."""
        ...

    async def addresses(self, name: str) -> list[IPAddress]:
        """The A and AAAA records of name."""
        ...

    async def mx(self, name: str) -> list[str]:
        """The MX host names of name (no trailing dot)."""
        ...


class Resolver:
    """`Lookups` through dnspython, with the server given or the system's."""

    def __init__(self, server: str | None, port: int, timeout: float) -> None:
        self.problem = ""
        if server is None:
            try:
                self._resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self.problem = f"no system resolver ({exc})"
            self.where = "the system resolver"
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [server]
            self._resolver.port = port
            self.where = f"{server}:{port}" if port != 53 else server
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        if self.problem:
            raise LookupFailed(self.problem)
        try:
            return await self._resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name} {rdtype} via {self.where}: {exc}") from None

    async def txt(self, name: str) -> list[str] | None:
        answer = await self._resolve(name, "TXT")
        if answer is None:
            return None
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def addresses(self, name: str) -> list[IPAddress]:
        found: list[IPAddress] = []
        for rdtype in ("A", "AAAA"):
            answer = await self._resolve(name, rdtype)
            found += [ipaddress.ip_address(r.to_text()) for r in answer or []]
        return found

    async def mx(self, name: str) -> list[str]:
        answer = await self._resolve(name, "MX")
        return [r.exchange.to_text(omit_final_dot=True) for r in answer or []]


def lookup_warn(name: str, resolver: Lookups, exc: LookupFailed) -> Check:
    """A lookup without an answer is a WARN, not a FAIL: the record may well be right."""
    return warn(
        name,
        f"could not look up: {exc}",
        f"check DNS from this gateway ({resolver.where}); `faultmail doctor --resolver IP[:PORT]` "
        "asks another server",
    )


def tags(record: str) -> dict[str, str]:
    """The tag=value pairs of a DKIM or DMARC record, keys lower-cased."""
    found: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            found[key.strip().lower()] = value.strip()
    return found
