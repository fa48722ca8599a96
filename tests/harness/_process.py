"""Shared bits for the harness's subprocesses: a last-resort reaper and log tails."""

from __future__ import annotations

import atexit
import subprocess
import weakref
from pathlib import Path

# Processes the harness started and has not stopped yet. If the test run or the demo dies
# without reaching its teardown (an exception inside a fixture, a second Ctrl-C), atexit still
# kills them, so no broker or daemon outlives the run holding a port.
_live: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def track(proc: subprocess.Popen[bytes]) -> None:
    _live.add(proc)


def untrack(proc: subprocess.Popen[bytes]) -> None:
    _live.discard(proc)


@atexit.register
def _reap() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])
