"""The composition root: builds every stage from Settings, runs and supervises them, handles
signals.

The pipeline, in the order data flows (built in that order by `build_pipeline`):
    ingest (paho thread) → intake: flood → parse → policy → outbox commit → MQTT ack
    dispatch: plan → claim → attempt: compose → sign → submit → outbox record (sent / retry /
    dead + audit)

Supervision (agent.supervision): each stage isolates its own unit of work (a message, a mail);
a stage that dies anyway takes the process down (exit 1, or 3 for a damaged outbox) so that
systemd restarts it. The watchdog is pinged only while every stage is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog
import uvloop

from agent.acks import AckListener, ack_topic
from agent.bounds import OutboxBounds
from agent.dispatch import DispatchConfig, Dispatcher, OutboxWorker
from agent.failpoints import Failpoints
from agent.flood import FloodGuard
from agent.group import Group, data_session
from agent.health import HealthReporter, serve_metrics
from agent.ingest import Ingest
from agent.intake import Intake
from agent.liveness import HEARTBEAT_S, Liveness, Stage
from agent.metrics import Metrics
from agent.models import RawMessage
from agent.outbox import Outbox
from agent.parse import ParseLimits
from agent.policy import Policy
from agent.settings.plain import read_handed_over
from agent.signing import DkimSigner
from agent.submit import SmtpSubmitter
from agent.supervision import EXIT_CORRUPT, EXIT_FAILURE, Monitor, Supervisor, call_soon, sd_notify
from agent.triage import NoticeRouting, Rules

if TYPE_CHECKING:
    from agent.settings import Settings

__all__ = ["EXIT_CORRUPT", "EXIT_FAILURE", "Pipeline", "build_pipeline", "run_daemon"]

# How long startup waits for the broker before declaring readiness anyway: alerts already in
# the outbox must go out even while the broker is unreachable.
READY_WAIT_S = 15.0
# SIGTERM: what is in flight gets this long; the unit's TimeoutStopSec is longer.
SHUTDOWN_GRACE_S = 8.0
# After a stage died: the others get this long to finish what they hold, then the process exits.
FATAL_GRACE_S = 3.0


@dataclass(slots=True)
class Pipeline:
    """The built stages, the events that tie them together, and what watches them."""

    ingest: Ingest
    intake: Intake
    writer: Outbox
    acks: AckListener
    db: OutboxWorker
    dispatcher: Dispatcher
    reporter: HealthReporter
    monitor: Monitor
    stages: dict[str, Stage]
    supervisor: Supervisor
    stopping: asyncio.Event
    subscribed: asyncio.Event
    group: Group | None = None


def _stages(settings: Settings, liveness: Liveness) -> dict[str, Stage]:
    """One liveness Stage per part of the pipeline, each with the silence it may keep."""
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
    if settings.cluster.grouped:
        stages["group"] = liveness.stage("group", stall_after=stall_after)
    return stages


def build_pipeline(
    settings: Settings, failpoints: Failpoints, loop: asyncio.AbstractEventLoop
) -> Pipeline:
    """Every stage, built in the order data flows through them. Nothing runs yet."""
    log = structlog.get_logger("faultmail.app")
    supervisor = Supervisor(loop)
    liveness = Liveness(on_failure=supervisor.on_failure)
    stages = _stages(settings, liveness)
    stopping, subscribed = asyncio.Event(), asyncio.Event()
    metrics = Metrics()
    for warning in settings.permission_warnings():
        log.warning("secret_file_permissions", problem=warning)
    signer = DkimSigner(settings.dkim) if settings.dkim is not None else None
    if signer is None:
        log.warning("dkim_disabled", fix="add a [dkim] section: unsigned mail may fail DMARC")
    # The intake's writer connection and the event loop's connection on its own thread.
    cluster = settings.cluster
    # In a group, Message-IDs are made of the group and each alert's identity (agent.identity).
    group_name = cluster.group if cluster.grouped else None
    writer = Outbox(settings.outbox_path, group=group_name)
    db = OutboxWorker(Outbox(settings.outbox_path, group=group_name))
    health = settings.health
    group: Group | None = None

    # 1. ingest: MQTT → RawMessage, handed to intake on paho's thread.
    acks = AckListener(settings.outbox_path, clock=time.time)
    ingest = Ingest(
        settings.mqtt,
        sink=lambda raw: intake.submit(raw),
        on_subscribed=lambda: _data_subscribed(loop, subscribed, group),
        clock=time.time,
        status_topic=(
            f"faultmail/{settings.gateway.id}/status"
            if health.status_topic and not cluster.grouped
            else None
        ),
        # Site HMIs acknowledge problems on faultmail/<gateway id>/ack (stored before the PUBACK).
        ack_topic=ack_topic(settings.gateway.id),
        on_ack=acks,
        session=data_session(settings) if cluster.grouped else None,
    )
    if cluster.grouped:
        # The group's control connection: membership, lease, held records, blocks, adoption.
        group = Group(
            settings,
            sink=lambda raw: intake.submit(raw),
            stage=stages["group"],
            on_ready=lambda: call_soon(loop, subscribed.set),
            activate=ingest.start,
        )
    # 2. intake: flood → parse → policy → outbox commit, then the MQTT acks; wakes delivery.
    intake = Intake(
        writer,
        Rules(
            policy=Policy(settings.routes, settings.allowlist),
            filters=settings.mqtt.topics,
            limits=ParseLimits(max_payload_bytes=settings.mqtt.max_payload_bytes),
            flood=FloodGuard(settings.flood, blocked=writer.blocked_uids()),
            notices=NoticeRouting(
                security=tuple(settings.flood.notify),
                gateway_id=settings.gateway.id,
                domain=settings.smtp.sender_domain,
            ),
        ),
        ack=_acker(ingest, group),
        on_stored=lambda urgent: call_soon(loop, lambda: dispatcher.wake(urgent)),
        bounds=OutboxBounds(settings.outbox),
        failpoints=failpoints,
        metrics=metrics,
        stage=stages["intake"],
        group=group,
    )
    # 3. dispatch: plan → claim → compose (config.compose) → sign (signer) → submit → record.
    dispatcher = Dispatcher(
        db,
        SmtpSubmitter.from_settings(settings),
        DispatchConfig.from_settings(settings),
        signer=signer,
        bounds=OutboxBounds(settings.outbox),
        failpoints=failpoints,
        metrics=metrics,
        stage=stages["dispatch"],
    )
    # Around the pipeline: reports on it, and watches what cannot beat by itself.
    reporter = HealthReporter(
        db=db,
        metrics=metrics,
        gateway=settings.gateway.id,
        interval=health.interval,
        textfile=health.metrics_textfile,
        publish_status=(
            ingest.publish_status if health.status_topic and not cluster.grouped else None
        ),
        notify=sd_notify,
        liveness=liveness,
        stage=stages["health"],
    )
    monitor = Monitor(liveness, stages, _mqtt_alive(ingest, group), db)
    return Pipeline(
        ingest=ingest,
        intake=intake,
        writer=writer,
        acks=acks,
        db=db,
        dispatcher=dispatcher,
        reporter=reporter,
        monitor=monitor,
        stages=stages,
        supervisor=supervisor,
        stopping=stopping,
        subscribed=subscribed,
        group=group,
    )


def _data_subscribed(
    loop: asyncio.AbstractEventLoop, subscribed: asyncio.Event, group: Group | None
) -> None:
    """The data session has its subscriptions: ready, and in a group "online" (agent.group)."""
    if group is not None:
        group.data_subscribed()
    call_soon(loop, subscribed.set)


def _acker(ingest: Ingest, group: Group | None) -> Callable[[RawMessage], bool]:
    """A PUBACK goes back by the connection a message came by (RawMessage.source)."""
    if group is None:
        return ingest.ack
    return lambda raw: ingest.ack(raw) if raw.source == 0 else group.ack(raw)


def _mqtt_alive(ingest: Ingest, group: Group | None) -> Callable[[], bool]:
    """What the watchdog sees of MQTT: the data connection's thread once started (a group
    member starts it when the group says) and, in a group, the control connection's and the
    group worker's."""
    if group is None:
        return ingest.network_alive
    return lambda: group.network_alive() and (not ingest.started or ingest.network_alive())


def _handle_signals(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    log = structlog.get_logger("faultmail.app")
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


async def _first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of `events` is set (or `timeout` passes)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


async def run_daemon(settings: Settings, failpoints: Failpoints) -> int:
    """Build, start, run until a signal or a stage's death, stop in order. The exit code."""
    log = structlog.get_logger("faultmail.app")
    loop = asyncio.get_running_loop()
    p = build_pipeline(settings, failpoints, loop)
    stopping, supervisor, stages = p.stopping, p.supervisor, p.stages
    _handle_signals(loop, stopping)

    p.intake.start()
    if p.group is not None:
        p.group.start()
    if p.group is None:
        p.ingest.start()
    # A group member connects its data session when the group says (agent.group): in shared
    # mode once it knows the members, in standby mode once it holds the lease.
    dispatch_task = asyncio.create_task(p.dispatcher.run(stopping), name="dispatch")
    supervisor.watch_task(dispatch_task, stages["dispatch"])
    monitor_task = asyncio.create_task(p.monitor.run(stopping), name="monitor")
    supervisor.watch_task(monitor_task, stages["health"])
    port = settings.health.metrics_port
    metrics_server = await serve_metrics(port, p.reporter) if port else None

    await _first(p.subscribed, stopping, supervisor.fatal, timeout=READY_WAIT_S)
    if not p.subscribed.is_set() and not stopping.is_set():
        log.warning("broker_not_ready", note="delivering queued mail while retrying the broker")
    health_task: asyncio.Task[None] | None = None
    if not supervisor.fatal.is_set():
        counts = await p.db(lambda o: o.counts())
        sd_notify("READY=1")
        health_task = asyncio.create_task(p.reporter.run(stopping), name="health")
        supervisor.watch_task(health_task, stages["health"])
        log.info(
            "ready",
            gateway=settings.gateway.id,
            outbox=str(settings.outbox_path),
            counts=counts,
            broker_subscribed=p.subscribed.is_set(),
        )

    await _first(stopping, supervisor.fatal)
    fatal = supervisor.fatal.is_set()
    stopping.set()
    started = time.monotonic()
    sd_notify("STOPPING=1")
    log.info("stopping", reason="stage failed" if fatal else "signal")
    # Commit and acknowledge what already arrived, then disconnect: the PUBACKs leave before
    # the DISCONNECT, and anything later stays with the broker for the next start.
    await asyncio.to_thread(p.intake.stop)
    await asyncio.to_thread(p.ingest.stop)
    if p.group is not None:
        await asyncio.to_thread(p.group.stop)
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
    p.db.shutdown()
    p.writer.close()
    p.acks.close()
    seconds = round(time.monotonic() - started, 2)
    if fatal:
        failed = [name for name, _ in supervisor.failed]
        code = supervisor.exit_code
        log.error("stopped_after_failure", stages=failed, exit_code=code, seconds=seconds)
        return code
    log.info("stopped", seconds=seconds)
    return 0


def run_handed_over(fd: int) -> int:
    """The daemon, started by `faultmail run`'s exec with the validated configuration on fd
    (agent.settings.plain). Logging first, so that everything after it is a JSON line."""
    from agent.cli.common import reported
    from agent.logs import configure_logging

    # The plain copy answers every field and method of the model (test_settings_plain.py).
    settings = cast("Settings", read_handed_over(fd))
    configure_logging(
        fmt=settings.logging.format, level=settings.logging.level, secrets=settings.secrets()
    )
    failpoints = Failpoints.from_env(os.environ.get("FAULTMAIL_FAILPOINTS"))
    return reported(lambda: _on_uvloop(run_daemon(settings, failpoints)))


def _on_uvloop(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run on uvloop's event loop (libuv), not asyncio's own: the same asyncio API, but
    the loop itself, its transports and TLS run in C instead of Python, an eighth of the event
    loop thread's CPU per delivered alert (issue 18)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
