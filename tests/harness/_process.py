"""Shared bits for the harness's subprocesses: stopping them, a last-resort reaper and log tails."""

from __future__ import annotations

import atexit
import signal
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


class Supervised:
    """Mixin for a harness class that runs one subprocess at a time in ``self._proc``."""

    _proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


def kill(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL unless it has exited already, wait for it and untrack it; its exit code."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    untrack(proc)
    return proc.returncode


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bool]:
    """SIGTERM unless it has exited already and wait up to timeout, then SIGKILL; untrack it.

    Returns (exit code, whether it had to be killed after the timeout).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return kill(proc), True
    untrack(proc)
    return proc.returncode, False


@atexit.register
def _reap() -> None:
    for proc in list(_live):
        kill(proc)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])
