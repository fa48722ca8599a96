"""Throughput: N alerts (2,000) from 20 devices published as fast as possible, grouping off
(one mail per alert), the per-device flood guard lifted out of the way.

- ingest alone: the relay is down, so nothing but intake works; alerts committed per second,
  from the start signal to the moment the outbox holds all N (polled every 5 ms). Two ways: live
  (published while the daemon runs; the publishers' own rate is reported next to it, it is the
  ceiling) and backlog (published while the daemon was stopped, so the broker holds them for its
  persistent session, then the daemon starts: from its first receive to the last commit).
- mails per second alone: the outbox then holds N mails; the relay comes back; from the relay's
  first 250 to its last (so the probe delay does not count), with DKIM off and on.
- end to end: relay up; from the start signal to the relay's 250 for the last of the N mails,
  with DKIM off and on (RSA-2048).
- the daemon's peak RSS (VmHWM) over all of these runs.
"""

from __future__ import annotations

import time

from tests.bench.common import (
    MB,
    BenchError,
    Result,
    Run,
    Stack,
    at_least,
    at_most,
    attempt,
    cpu_seconds,
    fmt_mb,
    mail_alert_ids,
    received_ts,
    rss,
    rss_parts,
    say,
    wait_until,
)
from tests.bench.load import LoadSpec, Publishers, device_uids, publish_all
from tests.harness.daemon import Daemon

INGEST_TARGET = 5000.0
E2E_TARGET = 300.0
E2E_DKIM_TARGET = 120.0
RSS_TARGET = 45 * MB
# Relay down: the first failed attempt pauses the queue; the probe finds the relay back quickly.
DELIVERY = {"retry_initial": 1.0, "retry_max": 5.0, "probe_interval": 0.5}


def _spec(run: Run, seq_start: int = 1) -> LoadSpec:
    s = run.sizes
    return LoadSpec(
        uids=device_uids("pump", s.throughput_devices),
        total=s.throughput_alerts,
        severity="error",
        codes=("E042", "E017", "W311", "E100"),
        seq_start=seq_start,
    )


def _ingest_live(run: Run, stack: Stack, spec: LoadSpec) -> tuple[float, float]:
    """Publish with the daemon running; (committed alerts/s, publishers' acked rate)."""
    reader = stack.outbox()
    before = reader.total()
    with Publishers(stack.broker.host, stack.broker.port, spec, run.sizes.publisher_processes) as p:
        go = p.go()
        done = wait_until(
            lambda: reader.total() >= before + spec.total,
            timeout=spec.total / 200 + 60,
            interval=0.005,
            what=f"{spec.total} alerts committed",
        )
        load = p.join()
    reader.close()
    return spec.total / (done - go), load.acked / max(1e-9, load.acked_at - load.first)


def _mail_rate(stack: Stack, pid: int, expected: int) -> tuple[float, str]:
    """Start the relay; mails per second from its first 250 to its last of `expected` mails,
    and where the CPU went: the daemon's and this process's (the relay's) per mail."""
    daemon0, relay0 = cpu_seconds(pid), time.process_time()
    stack.relay_back()
    mails = stack.relay.wait_for(expected, timeout=expected / 20 + 60)
    daemon_ms = (cpu_seconds(pid) - daemon0) / len(mails) * 1000
    relay_ms = (time.process_time() - relay0) / len(mails) * 1000
    times = sorted(received_ts(m) for m in mails)
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span if span > 0 else float("inf")
    wall_ms = 1000 / rate
    return rate, (
        f"{len(mails)} mails; per mail {wall_ms:.1f} ms wall, daemon CPU {daemon_ms:.1f} ms, "
        f"relay CPU {relay_ms:.1f} ms (smtp.connections = 2: two mails in flight)"
    )


def _drain_phase(run: Run, dkim: bool, hwm: list[tuple[int, str]]) -> list[Result]:
    label = "DKIM on" if dkim else "DKIM off"
    n = run.sizes.throughput_alerts
    results: list[Result] = []
    with Stack(run, f"throughput-relay-down-{'dkim' if dkim else 'plain'}", relay_up=False) as st:
        config = st.config(dkim=dkim, delivery=DELIVERY)
        daemon = st.daemon(config)
        committed, published = _ingest_live(run, st, _spec(run))
        say(
            f"  ingest (live, {label}): {committed:,.0f} alerts/s committed; "
            f"publishers got PUBACKs at {published:,.0f}/s"
        )
        if not dkim:
            results.append(
                Result(
                    "throughput: ingest, live (relay down)",
                    f"{committed:,.0f} alerts/s",
                    "≥ 5,000/s durable",
                    at_least(committed, INGEST_TARGET),
                    committed,
                    "alerts/s",
                    note=f"publishers' own rate {published:,.0f}/s is the ceiling",
                )
            )
        assert daemon.pid is not None
        rate, where = _mail_rate(st, daemon.pid, n)
        say(f"  mails/s ({label}): {rate:,.0f}; {where}")
        results.append(
            Result(
                f"throughput: mails/s draining a full outbox, {label}",
                f"{rate:,.0f} mails/s",
                "≥ 300/s" if not dkim else "report (≥ 120/s)",
                at_least(rate, E2E_TARGET if not dkim else E2E_DKIM_TARGET),
                rate,
                "mails/s",
                note=where,
            )
        )
        hwm.append((rss(daemon.pid)[1], rss_parts(daemon.pid)))
        if not dkim:
            results.append(_ingest_backlog(run, st, daemon))
            if daemon.pid is not None:
                hwm.append((rss(daemon.pid)[1], rss_parts(daemon.pid)))
    return results


def _ingest_backlog(run: Run, stack: Stack, daemon: Daemon) -> Result:
    """Daemon stopped, N alerts queued at the broker, daemon started: commit rate."""
    stack.relay_down()
    reader = stack.outbox()
    before = reader.total()
    last_id = max(reader.alerts(), default=0)
    reader.close()
    daemon.terminate()
    spec = _spec(run, seq_start=1_000_001)
    publish_all(stack.broker.host, stack.broker.port, spec, run.sizes.publisher_processes)
    daemon.start(20)
    reader = stack.outbox()
    done = wait_until(
        lambda: reader.total() >= before + spec.total,
        timeout=spec.total / 200 + 60,
        interval=0.005,
        what="the backlog committed",
    )
    row = (
        reader.db()
        .execute("SELECT MIN(received_at) FROM alerts WHERE id > ?", (last_id,))
        .fetchone()
    )
    reader.close()
    rate = spec.total / (done - float(row[0]))
    say(f"  ingest (backlog at the broker): {rate:,.0f} alerts/s committed")
    return Result(
        "throughput: ingest, broker backlog (relay down)",
        f"{rate:,.0f} alerts/s",
        "≥ 5,000/s durable",
        at_least(rate, INGEST_TARGET),
        rate,
        "alerts/s",
        note="from the daemon's first receive to the last commit; no publisher competing",
    )


def _end_to_end(run: Run, dkim: bool, hwm: list[tuple[int, str]]) -> Result:
    label = "DKIM on" if dkim else "DKIM off"
    spec = _spec(run)
    with Stack(run, f"throughput-e2e-{'dkim' if dkim else 'plain'}") as st:
        daemon = st.daemon(st.config(dkim=dkim, delivery=DELIVERY))
        with Publishers(st.broker.host, st.broker.port, spec, run.sizes.publisher_processes) as p:
            go = p.go()
            mails = st.relay.wait_for(spec.total, timeout=spec.total / 20 + 60)
            p.join()
        end = max(received_ts(m) for m in mails)
        ids = [i for m in mails for i in mail_alert_ids(m)]
        if len(set(ids)) != spec.total or len(ids) != spec.total:
            distinct = len(set(ids))
            raise BenchError(f"{len(ids)} alert ids in {len(mails)} mails, {distinct} distinct")
        assert daemon.pid is not None
        hwm.append((rss(daemon.pid)[1], rss_parts(daemon.pid)))
    rate = spec.total / (end - go)
    say(f"  end to end ({label}): {rate:,.0f} alerts/s ({spec.total} alerts, {end - go:.2f} s)")
    return Result(
        f"throughput: end to end, {label}",
        f"{rate:,.0f} alerts/s",
        "≥ 300/s" if not dkim else "report (≥ 120/s)",
        at_least(rate, E2E_TARGET if not dkim else E2E_DKIM_TARGET),
        rate,
        "alerts/s",
        note=f"{spec.total} alerts, grouping off",
    )


def run(run: Run) -> list[Result]:
    hwm: list[tuple[int, str]] = []
    results: list[Result] = []
    results += attempt("throughput: relay down, DKIM off", lambda: _drain_phase(run, False, hwm))
    results += attempt("throughput: relay down, DKIM on", lambda: _drain_phase(run, True, hwm))
    results += attempt("throughput: end to end, DKIM off", lambda: [_end_to_end(run, False, hwm)])
    results += attempt("throughput: end to end, DKIM on", lambda: [_end_to_end(run, True, hwm)])
    if not hwm:
        return results
    peak, parts = max(hwm)
    results.append(
        Result(
            "memory: peak RSS (VmHWM) during throughput",
            fmt_mb(peak),
            "≤ 45 MB",
            at_most(peak, RSS_TARGET),
            peak / MB,
            "MB",
            note="max over the throughput daemons ("
            + ", ".join(fmt_mb(h) for h, _ in hwm)
            + f"); its RSS at the end: {parts}",
        )
    )
    return results
