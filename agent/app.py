"""The composition root: builds every stage from Settings, runs and supervises them, handles
signals.

The pipeline, in the order data flows:
    ingest (paho thread) → intake: parse → policy → outbox commit → MQTT ack
    dispatch: plan → claim → compose → submit → outbox record (sent / retry / dead + audit)

Supervision: each stage isolates its own unit of work (a message, a mail); a stage that dies
anyway reports to `Supervisor`, which takes the process down (exit 1, or 3 for a damaged
outbox) so that systemd restarts it. The watchdog is pinged only while every stage is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable

import structlog

from agent.bounds import OutboxBounds
from agent.compose import ComposeContext
from agent.dispatch import Dispatcher, OutboxWorker
from agent.errors import OutboxCorrupt
from agent.failpoints import Failpoints
from agent.flood import FloodGuard
from agent.health import HealthReporter, serve_metrics
from agent.ingest import Ingest
from agent.intake import Intake, NoticeRouting
from agent.liveness import HEARTBEAT_S, Liveness, Stage
from agent.metrics import Metrics
from agent.outbox import GroupingRules, Outbox
from agent.parse import ParseLimits
from agent.policy import Policy
from agent.settings import Settings
from agent.signing import DkimSigner
from agent.submit import SmtpSubmitter

# How long startup waits for the broker before declaring readiness anyway: alerts already in
# the outbox must go out even while the broker is unreachable.
READY_WAIT_S = 15.0
# SIGTERM: what is in flight gets this long; the unit's TimeoutStopSec is longer.
SHUTDOWN_GRACE_S = 8.0
# After a stage died: the others get this long to finish what they hold, then the process exits.
FATAL_GRACE_S = 3.0
EXIT_FAILURE, EXIT_CORRUPT = 1, 3


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
        _call_soon(self._loop, self.fatal.set)

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


async def run_daemon(settings: Settings, failpoints: Failpoints) -> int:
    log = structlog.get_logger("faultmail.app")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    subscribed = asyncio.Event()
    supervisor = Supervisor(loop)
    liveness = Liveness(on_failure=supervisor.on_failure)
    stall_after = settings.health.stall_after
    stages = {
        name: liveness.stage(name, stall_after=stall_after) for name in ("mqtt", "intake", "outbox")
    }
    # Delivery does not beat while one submission is in flight: every step of it (connect,
    # EHLO, STARTTLS, AUTH, MAIL, RCPT) may take smtp.timeout, the end of DATA data_timeout.
    smtp_budget = 6 * settings.smtp.timeout + settings.smtp.data_timeout + 2 * HEARTBEAT_S
    stages["dispatch"] = liveness.stage("dispatch", stall_after=max(stall_after, smtp_budget))
    # The reporter beats once per report; a long health.interval must not look like a stall.
    stages["health"] = liveness.stage(
        "health", stall_after=max(stall_after, 3 * settings.health.interval)
    )
    path = settings.outbox_path

    mail = settings.mail
    for warning in settings.permission_warnings():
        log.warning("secret_file_permissions", problem=warning)
    signer = DkimSigner(settings.dkim) if settings.dkim is not None else None
    if signer is None:
        log.warning("dkim_disabled", fix="add a [dkim] section: unsigned mail may fail DMARC")
    metrics = Metrics()
    writer = Outbox(path)
    db = OutboxWorker(Outbox(path))
    smtp = settings.smtp
    dispatcher = Dispatcher(
        db,
        SmtpSubmitter.from_settings(settings),
        ComposeContext.from_settings(settings),
        delivery=settings.delivery,
        envelope_sender=smtp.sender_address,
        message_id_domain=smtp.sender_domain,
        idle_close=smtp.idle_close,
        bounds=OutboxBounds(settings.outbox),
        grouping=GroupingRules(mail.repeat_window, mail.digest_threshold),
        signer=signer,
        failpoints=failpoints,
        metrics=metrics,
        concurrency=smtp.connections,
        stage=stages["dispatch"],
    )
    intake = Intake(
        writer,
        Policy(settings.routes, settings.allowlist),
        settings.mqtt.topics,
        ParseLimits(max_payload_bytes=settings.mqtt.max_payload_bytes),
        ack=lambda raw: ingest.ack(raw),
        on_stored=lambda urgent: _call_soon(loop, lambda: dispatcher.wake(urgent)),
        bounds=OutboxBounds(settings.outbox),
        flood=FloodGuard(settings.flood, blocked=writer.blocked_uids()),
        notices=NoticeRouting(
            security=tuple(settings.flood.notify),
            gateway_id=settings.gateway.id,
            domain=smtp.sender_domain,
        ),
        failpoints=failpoints,
        metrics=metrics,
        stage=stages["intake"],
    )
    ingest = Ingest(
        settings.mqtt,
        sink=intake.submit,
        on_subscribed=lambda: _call_soon(loop, subscribed.set),
        clock=time.time,
        status_topic=f"faultmail/{settings.gateway.id}/status"
        if settings.health.status_topic
        else None,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # Logs go to stdout (the journal): there is no file to reopen. Say so, rather than
    # silently ignoring an operator who expects a config reload.
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: log.info(
            "sighup",
            note="logs go to stdout; nothing to reopen. "
            "Configuration changes take `systemctl restart faultmail`.",
        ),
    )

    intake.start()
    ingest.start()
    dispatch_task = asyncio.create_task(dispatcher.run(stopping), name="dispatch")
    supervisor.watch_task(dispatch_task, stages["dispatch"])
    monitor = Monitor(liveness, stages, ingest, db)
    monitor_task = asyncio.create_task(monitor.run(stopping), name="monitor")
    supervisor.watch_task(monitor_task, stages["health"])
    health = settings.health
    reporter = HealthReporter(
        db=db,
        metrics=metrics,
        gateway=settings.gateway.id,
        interval=health.interval,
        textfile=health.metrics_textfile,
        publish_status=ingest.publish_status if health.status_topic else None,
        notify=sd_notify,
        liveness=liveness,
        stage=stages["health"],
    )
    metrics_server = (
        await serve_metrics(health.metrics_port, reporter) if health.metrics_port else None
    )

    ended = [
        asyncio.ensure_future(subscribed.wait()),
        asyncio.ensure_future(stopping.wait()),
        asyncio.ensure_future(supervisor.fatal.wait()),
    ]
    await asyncio.wait(ended, timeout=READY_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    for waiter in ended:
        waiter.cancel()
    if not subscribed.is_set() and not stopping.is_set():
        log.warning("broker_not_ready", note="delivering queued mail while retrying the broker")
    health_task: asyncio.Task[None] | None = None
    if not supervisor.fatal.is_set():
        counts = await db(lambda o: o.counts())
        sd_notify("READY=1")
        health_task = asyncio.create_task(reporter.run(stopping), name="health")
        supervisor.watch_task(health_task, stages["health"])
        log.info(
            "ready",
            gateway=settings.gateway.id,
            outbox=str(path),
            counts=counts,
            broker_subscribed=subscribed.is_set(),
        )

    ended = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(supervisor.fatal.wait())]
    await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
    for waiter in ended:
        waiter.cancel()
    fatal = supervisor.fatal.is_set()
    stopping.set()
    started = time.monotonic()
    sd_notify("STOPPING=1")
    log.info("stopping", reason="stage failed" if fatal else "signal")
    # Commit and acknowledge what already arrived, then disconnect: the PUBACKs leave before
    # the DISCONNECT, and anything later stays with the broker for the next start.
    await asyncio.to_thread(intake.stop)
    await asyncio.to_thread(ingest.stop)
    try:
        await asyncio.wait_for(
            asyncio.shield(dispatch_task), timeout=FATAL_GRACE_S if fatal else SHUTDOWN_GRACE_S
        )
    except TimeoutError:
        log.warning("dispatch_abandoned", note="in-flight mail stays pending, same Message-ID")
    except Exception:
        pass  # already reported by the supervisor as the stage's failure
    monitor_task.cancel()
    if health_task is not None:
        with contextlib.suppress(Exception):
            await health_task
    if metrics_server is not None:
        metrics_server.close()
        await metrics_server.wait_closed()
    db.shutdown()
    writer.close()
    if fatal:
        log.error(
            "stopped_after_failure",
            stages=[name for name, _ in supervisor.failed],
            exit_code=supervisor.exit_code,
            seconds=round(time.monotonic() - started, 2),
        )
        return supervisor.exit_code
    log.info("stopped", seconds=round(time.monotonic() - started, 2))
    return 0


class Monitor:
    """Watches what cannot beat by itself and pings systemd's watchdog only while all is well.

    paho's network thread is checked for being alive; the outbox worker thread is sent a no-op
    whose completion is its heartbeat (a worker stuck in SQLite stops answering).
    """

    def __init__(
        self,
        liveness: Liveness,
        stages: dict[str, Stage],
        ingest: Ingest,
        db: OutboxWorker,
        notify: Callable[[str], None] = sd_notify,
    ) -> None:
        self._liveness = liveness
        self._mqtt = stages["mqtt"]
        self._outbox = stages["outbox"]
        self._ingest = ingest
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
        if self._ingest.network_alive():
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


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Hand a wake-up from a worker thread to the event loop (ignored once the loop closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)
