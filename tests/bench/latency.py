"""Latency: 20 alerts per second for 60 s from 20 devices, DKIM on (RSA-2048), grouping off.

Each alert's publish is timestamped here, right before paho sends it; the relay (in this
process, same clock) timestamps the mail when DATA is complete, before its 250 goes out. Mails
are mapped back to (device, seq) through X-Faultmail-Alert-Ids and the outbox. One alert goes
first and is waited for, so the measured ones find the SMTP session open (steady state); the
warm-up's own latency (TLS + AUTH included) is reported in the notes.
"""

from __future__ import annotations

import time

from tests.bench.common import (
    BenchError,
    Result,
    Run,
    Stack,
    at_most,
    mail_alert_ids,
    percentile,
    received_ts,
    say,
)
from tests.bench.load import PacedPublisher, device_uids, fault_payload

P99_TARGET_MS = 50.0


def run(run: Run) -> list[Result]:
    s = run.sizes
    uids = device_uids("valve", 20)
    count = int(s.latency_rate * s.latency_seconds)
    with Stack(run, "latency") as st:
        st.daemon(st.config(dkim=True, delivery={"retry_initial": 1.0, "retry_max": 5.0}))
        publisher = PacedPublisher(st.broker.host, st.broker.port)
        try:
            sent: dict[tuple[str, int], float] = {}
            warm_at = publisher.publish(
                "devices/warmup-01/fault", fault_payload("W000", "warning", "warm-up", 1)
            )
            warm = st.relay.wait_for(1, timeout=30)[0]
            warmup_ms = (received_ts(warm) - warm_at) * 1000
            started = time.monotonic()
            for i in range(count):
                due = started + i / s.latency_rate
                while (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                uid = uids[i % len(uids)]
                seq = 1 + i // len(uids)
                payload = fault_payload(f"E{seq % 7:03d}", "error", f"latency {uid} #{seq}", seq)
                sent[(uid, seq)] = publisher.publish(f"devices/{uid}/fault", payload)
            publish_span = time.monotonic() - started
            publisher.wait_acked()
        finally:
            publisher.close()
        mails = st.relay.wait_for(count + 1, timeout=60)
        reader = st.outbox()
        alerts = reader.alerts()
        reader.close()
    latencies: list[float] = []
    for mail in mails:
        for alert_id in mail_alert_ids(mail):
            key = (alerts[alert_id][0], alerts[alert_id][1] or 0)
            if key in sent:
                latencies.append((received_ts(mail) - sent.pop(key)) * 1000)
    if sent:
        raise BenchError(f"{len(sent)} published alerts were not found in the relay's mails")
    p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
    worst = max(latencies)
    rate = count / publish_span
    say(
        f"  {count} alerts at {rate:.1f}/s: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"p99 {p99:.1f} ms, max {worst:.1f} ms (warm-up incl. TLS+AUTH {warmup_ms:.0f} ms)"
    )
    return [
        Result(
            f"latency: publish → 250 at {s.latency_rate:g}/s, DKIM on",
            f"p50 {p50:.1f} / p95 {p95:.1f} / p99 {p99:.1f} / max {worst:.1f} ms",
            "p99 ≤ 50 ms",
            at_most(p99, P99_TARGET_MS),
            p99,
            "ms",
            note=f"{count} alerts over {publish_span:.0f} s; first mail of a session "
            f"(TLS + AUTH) {warmup_ms:.0f} ms",
            details={"p50": p50, "p95": p95, "p99": p99, "max": worst},
        )
    ]
