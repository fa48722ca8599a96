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
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.models import Gauges
from agent.outbox import Outbox

_HTTP_OK = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n"


class Metrics:
    """Counters since this process started (Prometheus handles the reset at a restart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self.relay_up = True
        self.last_success: float | None = None

    def add(self, name: str, label: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[(name, label)] += n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


_HELP = {
    "alerts_received": ("counter", "MQTT messages received, by outcome"),
    "mails": ("counter", "Send attempts, by outcome"),
    "queue_alerts_pending": ("gauge", "Alerts not yet delivered"),
    "queue_mails_pending": ("gauge", "Mails waiting for (re)delivery"),
    "queue_mails_dead": ("gauge", "Mails given up on (see faultmail queue)"),
    "queue_oldest_pending_age_seconds": ("gauge", "Age of the oldest pending alert"),
    "devices_blocked": ("gauge", "Devices blocked by the flood guard or a technician"),
    "relay_up": ("gauge", "1 when the last attempt reached the relay"),
    "last_success_timestamp_seconds": ("gauge", "When the relay last accepted a mail"),
}


def render_prometheus(metrics: Metrics, gauges: Gauges, gateway: str) -> str:
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
    last = metrics.last_success or gauges.last_sent_at
    values["last_success_timestamp_seconds"] = [("", round(last or 0.0, 3))]
    for name, (kind, text) in _HELP.items():
        full = f"faultmail_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
        default: list[tuple[str, float]] = [("", 0.0)] if kind == "gauge" else []
        for label, number in values.get(name, default):
            labels = f'gateway="{gateway}"' + (f',outcome="{label}"' if label else "")
            lines.append(f"{full}{{{labels}}} {number:g}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    ) -> None:
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
            except Exception as exc:  # a report must never take the daemon down
                self.log.warning("health_report_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)

    async def report_once(self) -> Gauges:
        now = self._clock()
        pid = os.getpid()
        gauges: Gauges = await self._db(lambda o: o.health(now, pid))
        self.latest = render_prometheus(self._metrics, gauges, self._gateway)
        if self._textfile is not None:
            write_atomically(self._textfile, self.latest)
        relay = "up" if self._metrics.relay_up else "DOWN"
        self._notify(
            f"STATUS=pending {gauges.pending_alerts} alerts, {gauges.dead_mails} dead mails, "
            f"relay {relay}, {gauges.blocked_devices} blocked devices"
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
                        "last_success": self._metrics.last_success or gauges.last_sent_at,
                    }
                )
            )
        return gauges


async def serve_metrics(port: int, reporter: HealthReporter) -> asyncio.base_events.Server:
    """GET anything on 127.0.0.1:port → the latest metrics (loopback only, by design)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            writer.write((_HTTP_OK + reporter.latest).encode())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port, family=socket.AF_INET)
