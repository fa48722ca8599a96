"""The doctor's vocabulary: one Check per line of output, and what the network checks pass on.

Every check family returns Checks; the ones that talk to a peer also return Facts (this
gateway's address, the peer's clock, its certificates) for the SPF and clock checks that run
after them. A bug inside one check becomes a FAIL line (`guard`), never a traceback that hides
the other checks.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography import x509


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One result: a short name, the verdict, what was seen and (for WARN/FAIL) the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def utc_now() -> datetime.datetime:
    """The wall clock, in UTC: the checks compare it with certificates and the relay's clock."""
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Facts:
    """What one network check learnt that the clock and SPF checks use."""

    local_address: str | None = None  # this gateway's address on the connection
    peer_time: datetime.datetime | None = None  # the peer's clock (relay greeting date)
    seen_at: datetime.datetime | None = None  # our clock when that arrived
    peer_time_text: str = ""
    certificates: list[tuple[str, x509.Certificate]] = field(default_factory=list)


@dataclass
class Group:
    """The checks of one family, in output order, and the facts it learnt on the way."""

    checks: list[Check]
    facts: Facts = field(default_factory=Facts)


def crashed(name: str, exc: Exception) -> Check:
    return fail(
        name,
        f"the check itself failed: {type(exc).__name__}: {exc}",
        "report this as a faultmail bug, with this output",
    )


async def guard(name: str, work: Awaitable[Group]) -> Group:
    """A bug in one check becomes a FAIL line; the other checks still report."""
    try:
        return await work
    except Exception as exc:
        return Group([crashed(name, exc)])


def guard_local(name: str, work: Callable[[], Check]) -> Check:
    """`guard` for the synchronous local checks."""
    try:
        return work()
    except Exception as exc:
        return crashed(name, exc)


def size_text(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
