"""The clock check: this gateway's clock against the date in the relay's greeting where it has
one, else the kernel's NTP status; a clock before a certificate's start is always a FAIL.

`clock_verdict` is pure (now and the kernel's state passed in); `clock_check` supplies them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import sys
from collections.abc import Sequence

from agent.doctor.result import Check, Facts, fail, ok, utc_now, warn

# Clock difference to the relay: up to CLOCK_OK_S is fine, up to CLOCK_FAIL_S a WARN.
CLOCK_OK_S = 60.0
CLOCK_FAIL_S = 300.0
# No clock showing a time before this is right (this faultmail did not exist yet): gateways
# without an RTC battery boot in 1970 until NTP sets the time.
CLOCK_FLOOR = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

_NTP_FIX = "enable time sync: timedatectl set-ntp true (systemd-timesyncd) or chrony"


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux); the trailing padding is part of the ABI.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 16),
    ]


# adjtimex(2): the return value TIME_ERROR and the status bit STA_UNSYNC both mean "not synced".
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


def kernel_clock_synced() -> tuple[bool, float] | None:
    """(synchronised, max error in seconds) from adjtimex(2), read only; None if unknown."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()  # modes = 0: read, change nothing
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    synced = state != _TIME_ERROR and not timex.status & _STA_UNSYNC
    return synced, timex.maxerror / 1_000_000


def clock_check(facts: Sequence[Facts]) -> Check:
    """`clock_verdict` with the wall clock and the kernel's NTP state as they are now."""
    return clock_verdict(facts, now=utc_now(), kernel=kernel_clock_synced())


def clock_verdict(
    facts: Sequence[Facts], *, now: datetime.datetime, kernel: tuple[bool, float] | None
) -> Check:
    """The clock line from what the network checks saw.

    now: this gateway's clock; kernel: `kernel_clock_synced()` (None when unknown). The first
    peer that told its time decides (OK within CLOCK_OK_S, WARN within CLOCK_FAIL_S, else
    FAIL); without one, the kernel's NTP state does.
    """
    name = "clock"
    if now < CLOCK_FLOOR:
        return fail(
            name,
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this faultmail was built: "
            "certificates look not yet valid and DKIM signatures carry a wrong time",
            f"set the time and {_NTP_FIX} (gateways without an RTC battery boot in 1970)",
        )
    for fact in facts:
        for who, cert in fact.certificates:
            if now < cert.not_valid_before_utc:
                return fail(
                    name,
                    f"the clock ({now:%Y-%m-%d %H:%M} UTC) is before the start of the {who}'s "
                    f"certificate ({cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)",
                    _NTP_FIX,
                )
    kernel_text = (
        "the kernel's NTP state is unknown"
        if kernel is None
        else (
            f"the kernel reports NTP sync (max error {kernel[1] * 1000:.0f} ms)"
            if kernel[0]
            else "the kernel reports the clock as not NTP-synchronised"
        )
    )
    for fact in facts:
        if fact.peer_time is None or fact.seen_at is None:
            continue
        skew = (fact.seen_at - fact.peer_time).total_seconds()
        side = "ahead of" if skew > 0 else "behind"
        detail = (
            f"{abs(skew):.0f} s {side} the relay's clock (its greeting says "
            f"{fact.peer_time_text}); {kernel_text}"
        )
        fix = f"{_NTP_FIX}; if this gateway's clock is right, the relay's is not"
        if abs(skew) <= CLOCK_OK_S:
            return ok(name, detail)
        if abs(skew) <= CLOCK_FAIL_S:
            return warn(name, detail, fix)
        return fail(
            name,
            f"{detail}: DKIM signature times and TLS certificate checks go wrong",
            fix,
        )
    unseen = (
        "could not compare with another clock (the relay's greeting carries no date; MQTT "
        "carries none)"
    )
    if kernel is not None and kernel[0]:
        return ok(name, f"{unseen}; {kernel_text}")
    return warn(name, f"{unseen}; {kernel_text}", _NTP_FIX)
