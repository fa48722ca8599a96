"""Health reports: stage gauges in the Prometheus text, and a metrics endpoint that a crowd of
idle connections cannot exhaust."""

from __future__ import annotations

import asyncio

from agent.health import METRICS_MAX_CONNECTIONS, HealthReporter, render_prometheus, serve_metrics
from agent.liveness import Liveness, StageReport, StageState
from agent.metrics import Metrics
from agent.models import Gauges

GAUGES = Gauges(0, 0, 0, 0.0, 0, None)


def test_stage_gauges_name_each_stage() -> None:
    """stage_up is 1 for alive/starting stages and 0 for stalled or dead ones, per stage."""
    text = render_prometheus(
        Metrics(),
        GAUGES,
        "gw-1",
        [
            StageReport("intake", StageState.STALLED, 42.0),
            StageReport("dispatch", StageState.ALIVE, 1.0),
            StageReport("mqtt", StageState.DEAD, 3.0, "RuntimeError: x"),
        ],
    )
    assert 'faultmail_stage_up{gateway="gw-1",stage="intake"} 0' in text
    assert 'faultmail_stage_up{gateway="gw-1",stage="dispatch"} 1' in text
    assert 'faultmail_stage_up{gateway="gw-1",stage="mqtt"} 0' in text
    assert 'faultmail_stage_silent_seconds{gateway="gw-1",stage="intake"} 42' in text


def test_metrics_endpoint_answers_a_scraper_past_a_crowd_of_idle_connections() -> None:
    """Connections beyond the cap are closed at once, idle ones time out, and a scraper that
    comes after the crowd still gets its figures."""

    async def scenario() -> tuple[int, bytes]:
        reporter = HealthReporter(
            db=lambda fn: None,
            metrics=Metrics(),
            gateway="gw-1",
            interval=30.0,
            textfile="",
            publish_status=None,
            notify=lambda s: None,
            liveness=Liveness(),
        )
        reporter.latest = "faultmail_up 1\n"
        server = await serve_metrics(0, reporter)
        port = server.sockets[0].getsockname()[1]
        crowd = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
        closed = 0
        for reader, _ in crowd:
            try:
                data = await asyncio.wait_for(reader.read(), 0.5)
            except TimeoutError:
                continue
            closed += data == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        for _, w in crowd:
            w.close()
        server.close()
        await server.wait_closed()
        return closed, body

    closed, body = asyncio.run(scenario())
    assert closed >= 50 - METRICS_MAX_CONNECTIONS
    assert body.endswith(b"faultmail_up 1\n")
