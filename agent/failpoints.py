"""Named fault points for fault-injection tests, in the style of etcd's failpoints.

`FAULTMAIL_FAILPOINTS=after_commit_before_ack` makes the daemon SIGKILL itself the first time it
reaches that point. Kill points: after_receive_before_commit, after_commit_before_ack,
before_data, after_250_before_mark_sent. Stage points, which prove supervision: intake_crash and
dispatch_crash raise `FailpointError` outside any unit of work (the stage dies, the process must
exit), intake_stall blocks the intake thread for good (the stage must show as stalled).
Delay points widen a race window on purpose: held_record_late holds the intake
LATE_S seconds between choosing a batch's held records and publishing them.
Unset in production: hit() is then one set lookup.

Only a source tree arms them: failpoints need the module agent/failpoints_armed.py, which the
Debian package leaves out. An installed daemon given FAULTMAIL_FAILPOINTS logs
`failpoints_ignored` and runs normally, so nothing in a gateway's environment can make it kill
itself.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
from collections.abc import Iterable

import structlog

_KILL = frozenset(
    {
        "after_receive_before_commit",
        "after_commit_before_ack",
        "before_data",
        "after_250_before_mark_sent",
    }
)
_RAISE = frozenset({"intake_crash", "dispatch_crash"})
_STALL = frozenset({"intake_stall"})
_LATE = frozenset({"held_record_late"})
KNOWN = _KILL | _RAISE | _STALL | _LATE
# How long a delay point holds its thread: longer than a poll, a mail and a group sweep.
LATE_S = 2.0
# Present in the repository and development installs only (see the module docstring).
_ARMING_MODULE = "agent.failpoints_armed"


def available() -> bool:
    """True where failpoints can be armed: a source tree, not the installed package."""
    return importlib.util.find_spec(_ARMING_MODULE) is not None


class FailpointError(RuntimeError):
    """Raised by a stage failpoint: a bug outside any unit of work, on purpose."""


class Failpoints:
    def __init__(self, names: Iterable[str] = ()) -> None:
        armed = frozenset(n.strip() for n in names if n.strip())
        if armed and not available():
            structlog.get_logger("faultmail.failpoints").warning(
                "failpoints_ignored",
                failpoints=sorted(armed),
                reason="this installation has no failpoints; FAULTMAIL_FAILPOINTS is for the "
                "fault-injection tests run from the repository",
            )
            armed = frozenset()
        unknown = armed - KNOWN
        if unknown:
            raise ValueError(f"unknown failpoint(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
        self._armed = armed

    @classmethod
    def from_env(cls, value: str | None) -> Failpoints:
        return cls((value or "").split(","))

    def hit(self, name: str) -> None:
        if name not in self._armed:
            return
        if name in _KILL:
            os.kill(os.getpid(), signal.SIGKILL)
        if name in _RAISE:
            raise FailpointError(f"failpoint {name}")
        if name in _STALL:
            threading.Event().wait()
        if name in _LATE:
            threading.Event().wait(LATE_S)
