"""Named crash points for fault-injection tests, in the style of etcd's failpoints.

`FAULTMAIL_FAILPOINTS=after_commit_before_ack` makes the daemon SIGKILL itself the first time it
reaches that point. Names: after_receive_before_commit, after_commit_before_ack,
before_data, after_250_before_mark_sent. Unset in production: hit() is then one set lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

KNOWN = frozenset(
    {
        "after_receive_before_commit",
        "after_commit_before_ack",
        "before_data",
        "after_250_before_mark_sent",
    }
)


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
        if name in self._armed:
            os.kill(os.getpid(), signal.SIGKILL)
