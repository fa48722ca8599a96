"""Supervision around the pipeline: a stage that dies takes the process down, and systemd's
watchdog is pinged only while every stage is alive.

Each stage isolates its own unit of work (a message, a mail); a stage that dies anyway reports
to `Supervisor`, which wakes the main task to exit (1, or 3 for a damaged outbox) so that
systemd restarts faultmail. `Monitor` watches what cannot beat by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

import structlog

from agent.dispatch import OutboxWorker
from agent.errors import LeaseLost, OutboxCorrupt
from agent.liveness import HEARTBEAT_S, Liveness, Stage

EXIT_FAILURE, EXIT_CORRUPT = 1, 3
# A group member that lost the standby lease (agent.errors.LeaseLost): restart as a standby.
EXIT_LEASE_LOST = 75


class Supervisor:
    """Told by any stage, on any thread, that it died: wakes the main task to exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.fatal = asyncio.Event()
        self.failed: list[tuple[str, BaseException]] = []
        self.log = structlog.get_logger("faultmail.app")

    def on_failure(self, stage: Stage, exc: BaseException) -> None:
        self.failed.append((stage.name, exc))
        self.log.critical(
            "stage_failed",
            stage=stage.name,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
            note="exiting so that systemd restarts faultmail; nothing acknowledged is lost",
        )
        call_soon(self._loop, self.fatal.set)

    def watch_task(self, task: asyncio.Task[None], stage: Stage) -> None:
        """An asyncio task's exception is seen only when awaited: report it when it ends."""

        def done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                stage.failed(exc)

        task.add_done_callback(done)

    @property
    def exit_code(self) -> int:
        if any(isinstance(exc, OutboxCorrupt) for _, exc in self.failed):
            return EXIT_CORRUPT
        if self.failed and all(isinstance(exc, LeaseLost) for _, exc in self.failed):
            return EXIT_LEASE_LOST
        return EXIT_FAILURE


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about readiness, status and watchdog; a no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            pass


class Monitor:
    """Watches what cannot beat by itself and pings systemd's watchdog only while all is well.

    paho's network thread is checked for being alive; the outbox worker thread is sent a no-op
    whose completion is its heartbeat (a worker stuck in SQLite stops answering).
    """

    def __init__(
        self,
        liveness: Liveness,
        stages: dict[str, Stage],
        mqtt_alive: Callable[[], bool],
        db: OutboxWorker,
        notify: Callable[[str], None] = sd_notify,
    ) -> None:
        self._liveness = liveness
        self._mqtt = stages["mqtt"]
        self._outbox = stages["outbox"]
        self._mqtt_alive = mqtt_alive
        self._db = db
        self._notify = notify
        self._probe: asyncio.Future[None] | None = None
        self._withheld = False
        self.log = structlog.get_logger("faultmail.app")

    async def run(self, stopping: asyncio.Event) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        # systemd wants a ping well within WatchdogSec; stages are checked as often.
        interval = min(HEARTBEAT_S, usec / 1e6 / 3) if usec > 0 else HEARTBEAT_S
        while not stopping.is_set():
            self.check()
            if usec > 0:
                self._ping()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    def check(self) -> None:
        if self._mqtt_alive():
            self._mqtt.beat()
        elif self._mqtt.error is None:
            self._mqtt.failed(RuntimeError("paho's MQTT network thread ended"))
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._db(lambda o: None))
            self._probe.add_done_callback(lambda f: None if f.cancelled() else self._outbox.beat())

    def _ping(self) -> None:
        if self._liveness.healthy():
            self._notify("WATCHDOG=1")
            self._withheld = False
            return
        if not self._withheld:
            self.log.error(
                "watchdog_withheld",
                stages=self._liveness.summary(),
                note="a stage is stalled or dead: systemd restarts faultmail at WatchdogSec",
            )
        self._withheld = True


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Hand a wake-up from a worker thread to the event loop (ignored once the loop closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)
