"""Idle cost: CPU seconds and wake-ups of the daemon over a minute with nothing to do.

The shipped settings (poll_interval 5 s, keepalive 30 s, DKIM on, grouping on), broker and relay
up, nothing published. After READY the daemon settles for 3 s (startup's housekeeping pass),
then these are read at both ends of the window, per thread (/proc/PID/task/TID): time on a CPU
(schedstat, in ns: utime + stime from /proc/PID/stat count 10 ms ticks, too coarse for this;
both are reported) and voluntary context switches (each one a sleep that ended: a wake-up). A
shorter window (--idle-seconds) is scaled to a minute.
"""

from __future__ import annotations

import time

from tests.bench.common import (
    Result,
    Run,
    Stack,
    at_most,
    cpu_seconds,
    say,
    thread_cpu_ns,
    thread_switches,
)

CPU_TARGET = 0.05  # s per minute


def run(run: Run) -> list[Result]:
    seconds = run.sizes.idle_seconds
    with Stack(run, "idle") as st:
        daemon = st.daemon(st.config(dkim=True, grouping=True))
        assert daemon.pid is not None
        pid = daemon.pid
        time.sleep(3.0)
        ticks0, ns0, sw0 = cpu_seconds(pid), thread_cpu_ns(pid), thread_switches(pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        ticks1, ns1, sw1 = cpu_seconds(pid), thread_cpu_ns(pid), thread_switches(pid)
        t1 = time.monotonic()
    scale = 60.0 / (t1 - t0)
    cpu = sum(ns1[tid] - ns0[tid] for tid in ns1 if tid in ns0) / 1e9 * scale
    ticks = (ticks1 - ticks0) * scale
    per_thread = {
        tid: ((sw1[tid][0] - sw0[tid][0]) * scale, (sw1[tid][1] - sw0[tid][1]) * scale)
        for tid in sw1
        if tid in sw0
    }
    voluntary = sum(v for v, _ in per_thread.values())
    involuntary = sum(n for _, n in per_thread.values())
    busy = sorted((v for v, _ in per_thread.values() if v > 0), reverse=True)
    say(
        f"  {cpu:.4f} CPU s/min ({ticks:.2f} by utime+stime ticks), "
        f"{voluntary:.0f} wake-ups/min over {len(per_thread)} threads "
        f"(per thread: {', '.join(f'{v:.0f}' for v in busy)}), {involuntary:.0f} preemptions/min"
    )
    return [
        Result(
            "idle: CPU per minute",
            f"{cpu:.4f} s/min",
            "≤ 0.05 s/min",
            at_most(cpu, CPU_TARGET),
            cpu,
            "s/min",
            note=f"schedstat over {t1 - t0:.0f} s; utime+stime ticks say {ticks:.2f} s/min"
            + (", scaled to a minute" if seconds < 60 else ""),
        ),
        Result(
            "idle: wake-ups per minute",
            f"{voluntary:.0f}/min",
            "no busy polling",
            None,
            voluntary,
            "/min",
            note="voluntary context switches per thread: "
            + ", ".join(f"{v:.0f}" for v in busy)
            + " (paho's network loop: once a second; the event loop and the outbox thread: "
            "3 outbox queries per poll_interval)",
        ),
    ]
