"""Paired bursts: two checkouts' daemons take turns, so both see the same machine (issue 18).

    git worktree add /tmp/base <commit>
    .venv/bin/python -m tests.bench.pair /tmp/base [--other DIR] [--rounds 10] [--alerts 2000]
                                                   [--dkim]

On this machine the daemon's CPU per alert moves by ±15 % and more from one run of
`make bench` to the next, more than most changes do; two runs, one per version, minutes
apart, cannot tell them apart. Here both daemons run at once, each with its own Mosquitto
and relay (the end-to-end run's stack: grouping off, flood guard lifted, 2 relay
connections), and take turns with bursts of the same size, in the order ABBA..., so a slow
spell of the machine falls on both. Printed per burst and as medians: the daemon's CPU per
alert (utime + stime) and its split between the event loop's thread and the others (outbox,
intake, paho; from /proc/PID/task/*/schedstat), the burst's rate (start to the relay's last
250), and the paired difference other - base.

The base checkout runs with this checkout's virtual environment; it must not need packages
this one lacks. Its daemon runs from its own directory, with PYTHONPATH ahead of the
editable install of this one.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common import (
    BenchError,
    Run,
    Sizes,
    Stack,
    cpu_seconds,
    received_ts,
    say,
    thread_cpu_ns,
)
from tests.bench.load import Publishers
from tests.bench.throughput import DELIVERY, burst_spec
from tests.harness.daemon import REPO_ROOT, Daemon


@dataclass
class Side:
    """One checkout's daemon and its bursts' figures (ms of CPU per alert)."""

    source: Path
    stack: Stack
    daemon: Daemon
    delivered: int = 0
    total: list[float] = field(default_factory=list)
    loop: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)


def _burst(run: Run, side: Side, seq: int, alerts: int) -> None:
    """One burst of `alerts` through this side's daemon, its CPU per alert recorded."""
    pid = side.daemon.pid
    assert pid is not None
    spec = burst_spec(run, seq_start=seq)
    stack = side.stack
    with Publishers(stack.broker.host, stack.broker.port, spec, run.sizes.publisher_processes) as p:
        cpu0, threads0 = cpu_seconds(pid), thread_cpu_ns(pid)
        go = p.go()
        mails = stack.relay.wait_for(side.delivered + alerts, timeout=alerts / 20 + 60)
        cpu, threads = cpu_seconds(pid) - cpu0, thread_cpu_ns(pid)
        p.join()
    side.delivered += alerts
    loop = threads.get(pid, 0) - threads0.get(pid, 0)
    rest = sum(ns - threads0.get(tid, 0) for tid, ns in threads.items() if tid != pid)
    side.total.append(cpu / alerts * 1e3)
    side.rate.append(alerts / (max(received_ts(m) for m in mails[-alerts:]) - go))
    side.loop.append(loop / alerts / 1e6)
    side.others.append(rest / alerts / 1e6)


def _start(run: Run, source: Path, index: int, dkim: bool) -> Side:
    stack = Stack(run, f"pair-{index}").__enter__()
    daemon = Daemon(stack.config(dkim=dkim, delivery=DELIVERY), stack.dir / "daemon", source=source)
    stack.daemons.append(daemon)
    daemon.start(30)
    return Side(source, stack, daemon)


def _row(name: str, values: list[float], digits: int = 2) -> str:
    listed = " ".join(f"{v:.{digits}f}" for v in values)
    median = statistics.median(values)
    return f"  {name:<30} median {median:7.{digits + 1 if digits else 0}f}  ({listed})"


def compare(base: Path, other: Path, rounds: int, alerts: int, dkim: bool) -> None:
    run = Run(Sizes(throughput_alerts=alerts), None, keep=False, broker="off")
    sides: list[Side] = []
    try:
        sides = [_start(run, base, 0, dkim), _start(run, other, 1, dkim)]
        seq = 1
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                _burst(run, side, seq, alerts)
                seq += alerts
                say(
                    f"round {r + 1}: {side.source}: {side.total[-1]:.3f} ms per alert "
                    f"(event loop {side.loop[-1]:.3f}, other threads {side.others[-1]:.3f}), "
                    f"{side.rate[-1]:,.0f} alerts/s"
                )
    finally:
        for side in sides:
            side.stack.__exit__(None, None, None)
        run.close()
    say(
        f"\n{alerts:,}-alert bursts, DKIM {'on' if dkim else 'off'}, {rounds} rounds; "
        "ms of CPU per alert"
    )
    for side in sides:
        say(f"{side.source}")
        say(_row("daemon", side.total))
        say(_row("event loop thread", side.loop))
        say(_row("other threads", side.others))
        say(_row("alerts/s (publish to last 250)", side.rate, 0))
    a, b = sides
    say(f"{b.source} - {a.source}, burst by burst")
    say(_row("daemon", [y - x for x, y in zip(a.total, b.total, strict=True)]))
    say(_row("event loop thread", [y - x for x, y in zip(a.loop, b.loop, strict=True)]))
    say(_row("other threads", [y - x for x, y in zip(a.others, b.others, strict=True)]))
    say(_row("alerts/s", [y - x for x, y in zip(a.rate, b.rate, strict=True)], 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pair", description=__doc__)
    parser.add_argument("base", type=Path, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--other", type=Path, default=REPO_ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--alerts", type=int, default=Sizes().throughput_alerts)
    parser.add_argument("--dkim", action="store_true", help="sign every mail (RSA-2048)")
    args = parser.parse_args(argv)
    for source in (args.base, args.other):
        if not (source / "agent" / "__main__.py").is_file():
            say(f"pair: {source} is not a faultmail checkout (no agent/__main__.py)")
            return 2
    # aiosmtpd (the relay) logs a warning about its own deprecated attribute on every login.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    try:
        compare(args.base.resolve(), args.other.resolve(), args.rounds, args.alerts, args.dkim)
    except BenchError as exc:
        say(f"pair failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
