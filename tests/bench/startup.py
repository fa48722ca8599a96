"""Startup: from exec of ``python -m agent run`` to READY=1 on the notify socket (systemd
Type=notify readiness: the outbox is open and the broker subscription acknowledged).

The shipped settings with DKIM on (the key is read and test-signed at startup). The first start
creates the outbox; the others open it again (SIGTERM in between).
"""

from __future__ import annotations

import time

from tests.bench.common import MB, Result, Run, Stack, at_most, fmt_mb, median, rss, rss_parts, say

TARGET_S = 1.0
READY_RSS_TARGET = 42 * MB  # issue 18


def run(run: Run) -> list[Result]:
    times: list[float] = []
    at_ready: list[int] = []
    parts = ""
    with Stack(run, "startup") as st:
        daemon = st.daemon(st.config(dkim=True, grouping=True), start=False)
        for _ in range(run.sizes.startup_runs):
            started = time.monotonic()
            daemon.start(20)
            times.append(time.monotonic() - started)
            assert daemon.pid is not None
            time.sleep(0.5)
            at_ready.append(rss(daemon.pid)[0])
            parts = rss_parts(daemon.pid)
            daemon.terminate()
    fresh, again = times[0], times[1:] or times
    say(f"  fresh outbox {fresh:.3f} s; again: {', '.join(f'{t:.3f}' for t in again)} s")
    worst = max(times)
    return [
        Result(
            "startup: exec → READY",
            f"median {median(again):.2f} s, max {worst:.2f} s",
            "≤ 1 s",
            at_most(worst, TARGET_S),
            worst,
            "s",
            note=f"{len(times)} starts; the first (creating the outbox) {fresh:.2f} s",
        ),
        Result(
            "memory: RSS half a second after READY",
            fmt_mb(max(at_ready)),
            "≤ 42 MiB",
            at_most(max(at_ready), READY_RSS_TARGET),
            max(at_ready) / MB,
            "MiB",
            note=f"{parts} (the imports alone: see README.md)",
        ),
    ]
