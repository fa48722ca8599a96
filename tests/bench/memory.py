"""Memory: RSS of the daemon across 100,000 alerts (a leak check) and after an hour-equivalent of
idle. (Peak RSS during throughput, after startup and with a big digest are reported by the
throughput, startup and drain benchmarks.)

Leak check: DKIM on, the shipped digest threshold, a 1 s repeat window (so repeats are released
every second as follow-ups and every alert goes through planning, composing, signing and a 250,
at a rate that lets 100,000 pass in under a minute instead of the ~10 minutes one mail per alert
would take), 5 devices x 3 codes: 15 threads, fewer than the digest threshold, so each window
ends in follow-ups (a digest of thousands sets the RSS by its own size; the drain benchmark
reports that). Published at a steady 3,000/s so the follow-ups stay the same size. A warm-up of
10 % first, then the alerts in equal chunks; after each chunk, once nothing is pending, VmRSS is
read. The figure is the growth from after the warm-up to the end. Some is expected early:
SQLite's page cache (2 MB per connection by default, two connections) fills as the file grows,
and the allocator's arenas settle to the largest mail and batch seen. The verdict looks at the
last half only: more than 2 MB there (50 bytes per alert over 40,000) counts as a leak.

Hour-equivalent idle: what runs while idle is the delivery loop (one wake-up per
poll_interval, 5 s shipped, i.e. 720 an hour, each querying the outbox), paho's network loop
and its keepalive ping, and the SMTP idle close. With poll_interval = 0.05 s, 40 s of idle make
800 passes of the delivery loop, more than an hour's worth; keepalive (minimum 5 s) and the
idle close (1 s) run too. After a throughput-sized load, VmRSS and VmHWM before and after.
"""

from __future__ import annotations

import time

from tests.bench.common import (
    MB,
    Result,
    Run,
    Stack,
    at_most,
    attempt,
    fmt_mb,
    rss,
    say,
    wait_until,
)
from tests.bench.load import LoadSpec, Publishers, device_uids, publish_all

RSS_TARGET = 45 * MB
LEAK_NOISE = 2 * MB
CODES = ("E042", "E017", "W311", "E100", "I001")


def _quiet(stack: Stack, expected: int, timeout: float) -> None:
    reader = stack.outbox()
    try:
        wait_until(
            lambda: (c := reader.counts()).get("pending", 0) == 0 and sum(c.values()) >= expected,
            timeout=timeout,
            interval=0.1,
            what="nothing pending",
        )
    finally:
        reader.close()
    time.sleep(0.5)


def _leak(run: Run) -> Result:
    s = run.sizes
    chunks = max(2, s.leak_checkpoints)
    chunk = s.leak_alerts // chunks
    warmup = max(chunk // 2, s.leak_alerts // 10)
    uids = device_uids("leak", 5)
    with Stack(run, "memory-leak") as st:
        # device_budget 0: five devices send all the load, and the per-device budget (10 mails
        # in 300 s as shipped) would hold their follow-ups for 5 minutes, longer than _quiet
        # waits; this benchmark wants every window to end in follow-ups.
        mail = {"repeat_window": 1, "digest_threshold": 20, "device_budget": 0}
        daemon = st.daemon(st.config(dkim=True, grouping=True, mail=mail))
        assert daemon.pid is not None
        pid = daemon.pid
        sent = 0
        seq = 1
        points: list[tuple[int, int]] = []
        started = time.monotonic()
        for size in [warmup] + [chunk] * chunks:
            spec = LoadSpec(
                uids=uids,
                total=size,
                rate=s.leak_rate,
                codes=CODES[:3],
                seq_start=seq,
                timeout=size / s.leak_rate * 3 + 60,
            )
            with Publishers(st.broker.host, st.broker.port, spec, s.publisher_processes) as p:
                p.go()
                p.join()
            seq += size // len(uids) + 1
            sent += size
            _quiet(st, sent, timeout=size / 100 + 60)
            points.append((sent, rss(pid)[0]))
        hwm = rss(pid)[1]
        mails = len(st.relay.mails)
    elapsed = time.monotonic() - started
    base = points[0][1]
    growth = points[-1][1] - base
    half = len(points) // 2
    late = points[-1][1] - points[half][1]
    late_alerts = points[-1][0] - points[half][0]
    say(
        "  RSS after "
        + ", ".join(f"{n:,}: {fmt_mb(r)}" for n, r in points)
        + f"; {mails} mails; {elapsed:.0f} s"
    )
    counted = sent - warmup
    return Result(
        f"memory: RSS growth over {counted:,} alerts (leak check)",
        f"{growth / MB:+.1f} MiB; last {late_alerts:,}: {late / MB:+.1f} MiB",
        "no growth beyond noise",
        late <= LEAK_NOISE,
        late / MB,
        "MiB",
        note=f"RSS {fmt_mb(base)} after the warm-up, {fmt_mb(points[-1][1])} at the end; "
        f"2 MB over the last {late_alerts:,} alerts would be "
        f"{LEAK_NOISE / late_alerts:.0f} bytes per alert; VmHWM {fmt_mb(hwm)}; "
        f"{mails} mails (1 s repeat window: follow-ups)",
        details={"points": points},
    )


def _idle_hour(run: Run) -> list[Result]:
    s = run.sizes
    with Stack(run, "memory-idle") as st:
        daemon = st.daemon(
            st.config(
                dkim=True,
                grouping=True,
                mail={"repeat_window": 1, "digest_threshold": 20},
                mqtt={"keepalive": 5},
                smtp={"idle_close": 1},
                delivery={"poll_interval": s.idle_hour_poll},
            )
        )
        assert daemon.pid is not None
        spec = LoadSpec(uids=device_uids("pump", 5), total=s.throughput_alerts, codes=CODES[:3])
        publish_all(st.broker.host, st.broker.port, spec, s.publisher_processes)
        _quiet(st, spec.total, timeout=120)
        before, hwm_before = rss(daemon.pid)
        time.sleep(s.idle_hour_seconds)
        after, hwm_after = rss(daemon.pid)
    passes = s.idle_hour_seconds / s.idle_hour_poll
    say(
        f"  after load: RSS {fmt_mb(before)} (HWM {fmt_mb(hwm_before)}); after {passes:.0f} idle "
        f"passes: RSS {fmt_mb(after)} (HWM {fmt_mb(hwm_after)})"
    )
    return [
        Result(
            "memory: peak RSS after an hour-equivalent of idle",
            f"HWM {fmt_mb(hwm_after)}, RSS {fmt_mb(after)} ({(after - before) / MB:+.1f} MB idle)",
            "≤ 45 MiB",
            at_most(hwm_after, RSS_TARGET),
            hwm_after / MB,
            "MiB",
            note=f"{passes:.0f} delivery-loop passes (poll_interval {s.idle_hour_poll} s for "
            f"{s.idle_hour_seconds:.0f} s; an hour at the shipped 5 s is 720) after "
            f"{spec.total:,} alerts",
        )
    ]


def run(run: Run) -> list[Result]:
    return [
        *attempt("memory: leak check", lambda: [_leak(run)]),
        *attempt("memory: hour-equivalent idle", lambda: _idle_hour(run)),
    ]
