"""The composition root: builds every stage from Settings, runs them, handles signals.

The pipeline, in the order data flows:
    ingest (paho thread) → intake: parse → policy → outbox commit → MQTT ack
    dispatch: plan → claim → compose → submit → outbox record (sent / retry / dead + audit)
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
from agent.failpoints import Failpoints
from agent.health import HealthReporter, Metrics, serve_metrics
from agent.ingest import Ingest
from agent.intake import Intake, NoticeRouting
from agent.outbox import GroupingRules, Outbox
from agent.parse import ParseLimits
from agent.policy import FloodGuard, Policy
from agent.settings import Settings
from agent.signing import DkimSigner
from agent.submit import SmtpSubmitter

# How long startup waits for the broker before declaring readiness anyway: alerts already in
# the outbox must go out even while the broker is unreachable.
READY_WAIT_S = 15.0
# SIGTERM: what is in flight gets this long; the unit's TimeoutStopSec is longer.
SHUTDOWN_GRACE_S = 8.0


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
    watchdog_task = asyncio.create_task(_watchdog(stopping), name="watchdog")
    health = settings.health
    reporter = HealthReporter(
        db=db,
        metrics=metrics,
        gateway=settings.gateway.id,
        interval=health.interval,
        textfile=health.metrics_textfile,
        publish_status=ingest.publish_status if health.status_topic else None,
        notify=sd_notify,
    )
    metrics_server = (
        await serve_metrics(health.metrics_port, reporter) if health.metrics_port else None
    )

    ready = [asyncio.ensure_future(subscribed.wait()), asyncio.ensure_future(stopping.wait())]
    await asyncio.wait(ready, timeout=READY_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    for waiter in ready:
        waiter.cancel()
    if not subscribed.is_set() and not stopping.is_set():
        log.warning("broker_not_ready", note="delivering queued mail while retrying the broker")
    counts = await db(lambda o: o.counts())
    sd_notify("READY=1")
    health_task = asyncio.create_task(reporter.run(stopping), name="health")
    log.info(
        "ready",
        gateway=settings.gateway.id,
        outbox=str(path),
        counts=counts,
        broker_subscribed=subscribed.is_set(),
    )

    await stopping.wait()
    started = time.monotonic()
    sd_notify("STOPPING=1")
    log.info("stopping")
    # Commit and acknowledge what already arrived, then disconnect: the PUBACKs leave before
    # the DISCONNECT, and anything later stays with the broker for the next start.
    await asyncio.to_thread(intake.stop)
    await asyncio.to_thread(ingest.stop)
    try:
        await asyncio.wait_for(dispatch_task, timeout=SHUTDOWN_GRACE_S)
    except TimeoutError:
        log.warning("dispatch_abandoned", note="in-flight mail stays pending, same Message-ID")
    watchdog_task.cancel()
    await health_task
    if metrics_server is not None:
        metrics_server.close()
        await metrics_server.wait_closed()
    db.shutdown()
    writer.close()
    log.info("stopped", seconds=round(time.monotonic() - started, 2))
    return 0


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Hand a wake-up from a worker thread to the event loop (ignored once the loop closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


async def _watchdog(stopping: asyncio.Event) -> None:
    """Ping systemd's watchdog from the event loop itself, so a hung loop gets restarted."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    interval = usec / 1e6 / 3
    while not stopping.is_set():
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
