"""Named fault points for fault-injection tests, in the style of etcd's failpoints.

`FAULTMAIL_FAILPOINTS=after_commit_before_ack` makes the daemon SIGKILL itself the first time it
reaches that point. Kill points: after_receive_before_commit, after_commit_before_ack,
before_data, after_250_before_mark_sent. Stage points, which prove supervision: intake_crash and
dispatch_crash raise `FailpointError` outside any unit of work (the stage dies, the process must
exit), intake_stall blocks the intake thread for good (the stage must show as stalled).
Unset in production: hit() is then one set lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable

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
KNOWN = _KILL | _RAISE | _STALL


class FailpointError(RuntimeError):
    """Raised by a stage failpoint: a bug outside any unit of work, on purpose."""


class Failpoints:
    def __init__(self, names: Iterable[str] = ()) -> None:
        armed = frozenset(n.strip() for n in names if n.strip())
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
