"""How the gateway reports on itself: counters, Prometheus textfile and loopback endpoint,
systemd STATUS=, a retained MQTT status topic with a JSON heartbeat, and the heartbeat row
that `faultmail status` reads.

Everything runs on one timer (health.interval) so an idle daemon wakes rarely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.errors import OutboxCorrupt
from agent.liveness import Liveness, Stage, StageReport, StageState
from agent.metrics import Metrics
from agent.models import Gauges
from agent.outbox import Outbox

_HTTP_OK = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n"
# The loopback metrics endpoint serves a scraper, not a crowd: more connections than this at
# once are closed at once, and a client gets this long to send its request. Without both, a
# local process holding ~1,000 idle connections used up the daemon's file descriptors.
METRICS_MAX_CONNECTIONS = 8
METRICS_REQUEST_TIMEOUT_S = 2.0
METRICS_MAX_REQUEST_BYTES = 8192


_HELP = {
    "alerts_received": ("counter", "MQTT messages received, by outcome"),
    "mails": ("counter", "Send attempts, by outcome"),
    "queue_alerts_pending": ("gauge", "Alerts not yet delivered"),
    "queue_mails_pending": ("gauge", "Mails waiting for (re)delivery"),
    "queue_mails_dead": ("gauge", "Mails given up on (see faultmail queue)"),
    "queue_oldest_pending_age_seconds": ("gauge", "Age of the oldest pending alert"),
    "devices_blocked": ("gauge", "Devices blocked by the flood guard or a technician"),
    "relay_up": ("gauge", "1 when the last attempt reached the relay"),
    "auth_failing": ("gauge", "1 while the relay refuses our login (the queue waits)"),
    "last_success_timestamp_seconds": ("gauge", "When the relay last accepted a mail"),
    "stage_up": ("gauge", "1 while the stage is alive (mqtt, intake, dispatch, outbox, health)"),
    "stage_silent_seconds": ("gauge", "Seconds since the stage last showed progress or idled"),
}


def render_prometheus(
    metrics: Metrics, gauges: Gauges, gateway: str, stages: list[StageReport] | None = None
) -> str:
    """node_exporter textfile format."""
    lines: list[str] = []
    by_name: dict[str, list[tuple[str, int]]] = {}
    for (name, label), value in sorted(metrics.snapshot().items()):
        by_name.setdefault(name, []).append((label, value))
    values: dict[str, list[tuple[str, float]]] = {
        name: [(label, float(v)) for label, v in items] for name, items in by_name.items()
    }
    values["queue_alerts_pending"] = [("", float(gauges.pending_alerts))]
    values["queue_mails_pending"] = [("", float(gauges.pending_mails))]
    values["queue_mails_dead"] = [("", float(gauges.dead_mails))]
    values["queue_oldest_pending_age_seconds"] = [
        ("", float(round(gauges.oldest_pending_age_s, 1)))
    ]
    values["devices_blocked"] = [("", float(gauges.blocked_devices))]
    values["relay_up"] = [("", 1.0 if metrics.relay_up else 0.0)]
    values["auth_failing"] = [("", 1.0 if metrics.auth_failing else 0.0)]
    last = metrics.last_success or gauges.last_sent_at
    values["last_success_timestamp_seconds"] = [("", round(last or 0.0, 3))]
    label_names = {"stage_up": "stage", "stage_silent_seconds": "stage"}
    reports = stages or []
    values["stage_up"] = [(r.name, 1.0 if r.state in _UP else 0.0) for r in reports]
    values["stage_silent_seconds"] = [(r.name, round(r.silent_s, 1)) for r in reports]
    for name, (kind, text) in _HELP.items():
        full = f"faultmail_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
        default: list[tuple[str, float]] = [("", 0.0)] if kind == "gauge" else []
        label_name = label_names.get(name, "outcome")
        for label, number in values.get(name, default):
            labels = f'gateway="{gateway}"' + (f',{label_name}="{label}"' if label else "")
            lines.append(f"{full}{{{labels}}} {number:g}")
    return "\n".join(lines) + "\n"


_UP = (StageState.ALIVE, StageState.STARTING)


# node_exporter runs as another user: the textfile must be readable by others whatever the
# umask (the unit sets UMask=0077, which would leave it 0600).
TEXTFILE_MODE = 0o644


def write_atomically(path: Path, text: str) -> None:
    """Write to a new temporary file in the same directory, then rename: readers never see half.

    The directory may be writable by others (node_exporter's textfile directory often is), so
    nothing found there is written through: the temporary file gets an unpredictable name and is
    created with O_CREAT|O_EXCL|O_NOFOLLOW (mkstemp), where a predictable name once let a local
    user link it to the outbox's WAL and destroy the outbox. The rename replaces a symlink at
    `path` itself, never its target. On any failure the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), TEXTFILE_MODE)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class HealthReporter:
    """The periodic task: gauges from the outbox, then every configured report."""

    def __init__(
        self,
        *,
        db: Callable[[Callable[[Outbox], Gauges]], Any],
        metrics: Metrics,
        gateway: str,
        interval: float,
        textfile: str,
        publish_status: Callable[[str], None] | None,
        notify: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        liveness: Liveness | None = None,
        stage: Stage | None = None,
    ) -> None:
        self._liveness = liveness or Liveness()
        self._stage = stage or Stage("health")
        self._db = db
        self._metrics = metrics
        self._gateway = gateway
        self._interval = interval
        self._textfile = Path(textfile) if textfile else None
        self._publish_status = publish_status
        self._notify = notify
        self._clock = clock
        self.latest: str = ""
        self.log = structlog.get_logger("faultmail.health")

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.report_once()
            except OutboxCorrupt:
                raise  # the supervisor exits 3: nothing can be stored any more
            except Exception as exc:  # one failed report must not end reporting
                self.log.warning("health_report_failed", error=f"{type(exc).__name__}: {exc}")
            self._stage.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    async def report_once(self) -> Gauges:
        now = self._clock()
        pid = os.getpid()
        reports = self._liveness.reports()
        stages = {r.name: r.as_dict() for r in reports}
        gauges: Gauges = await self._db(lambda o: o.health(now, pid, stages))
        self.latest = render_prometheus(self._metrics, gauges, self._gateway, reports)
        if self._textfile is not None:
            write_atomically(self._textfile, self.latest)
        relay = "up" if self._metrics.relay_up else "DOWN"
        if self._metrics.auth_failing:
            relay = "LOGIN REFUSED"
        troubled = [f"{r.name} {r.state.value}" for r in reports if r.state not in _UP]
        self._notify(
            f"STATUS=pending {gauges.pending_alerts} alerts, {gauges.dead_mails} dead mails, "
            f"relay {relay}, {gauges.blocked_devices} blocked devices"
            + (f"; STAGE PROBLEM: {', '.join(troubled)}" if troubled else "")
        )
        if self._publish_status is not None:
            self._publish_status(
                json.dumps(
                    {
                        "state": "online",
                        "gateway": self._gateway,
                        "ts": round(now, 3),
                        "pending_alerts": gauges.pending_alerts,
                        "pending_mails": gauges.pending_mails,
                        "dead_mails": gauges.dead_mails,
                        "oldest_pending_age_s": round(gauges.oldest_pending_age_s, 1),
                        "blocked_devices": gauges.blocked_devices,
                        "relay_up": self._metrics.relay_up,
                        "auth_failing": bool(self._metrics.auth_failing),
                        "auth_error": self._metrics.auth_failing,
                        "last_success": self._metrics.last_success or gauges.last_sent_at,
                        "healthy": not troubled,
                        "stages": stages,
                    }
                )
            )
        return gauges


async def serve_metrics(port: int, reporter: HealthReporter) -> asyncio.base_events.Server:
    """GET anything on 127.0.0.1:port → the latest metrics (loopback only, by design).

    At most METRICS_MAX_CONNECTIONS at once; others are closed unanswered, and a client that
    does not finish its request within METRICS_REQUEST_TIMEOUT_S is dropped.
    """
    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= METRICS_MAX_CONNECTIONS:
            writer.transport.abort()
            return
        open_connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), METRICS_REQUEST_TIMEOUT_S)
            writer.write((_HTTP_OK + reporter.latest).encode())
            await asyncio.wait_for(writer.drain(), METRICS_REQUEST_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            open_connections -= 1
            writer.close()

    return await asyncio.start_server(
        handle, "127.0.0.1", port, family=socket.AF_INET, limit=METRICS_MAX_REQUEST_BYTES
    )
