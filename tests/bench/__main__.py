"""``python -m tests.bench [--quick] [--only NAME,...] [--json FILE]``: run the benchmarks, print
one table (benchmark | figure | target | met?) and the machine they ran on.

Figures are printed, never asserted: the exit status is 0 when every benchmark produced its
figures (met or not), 1 when one of them failed to run.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tests.bench import drain, idle, latency, memory, startup, storm, throughput
from tests.bench.common import (
    Result,
    Run,
    Sizes,
    as_json,
    attempt,
    load_average,
    machine,
    now_iso,
    say,
)

BENCHMARKS: dict[str, Callable[[Run], list[Result]]] = {
    "startup": startup.run,
    "idle": idle.run,
    "throughput": throughput.run,
    "latency": latency.run,
    "storm": storm.run,
    "drain": drain.run,
    "memory": memory.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run of everything")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the results and machine as JSON")
    parser.add_argument("--work-dir", type=Path, help="where the per-run directory goes ($TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs)")
    parser.add_argument(
        "--time-limit", type=int, help="hard limit for the whole run in s (900 quick, 2400 full)"
    )
    parser.add_argument(
        "--broker-persistence",
        choices=("off", "recommended"),
        default="off",
        help="off (default): the broker keeps sessions in memory; recommended: "
        "config/mosquitto-faultmail.conf (saves on every change, ~1,300 msg/s ceiling here)",
    )
    sizes = parser.add_argument_group("sizes (defaults: the issue's, or --quick's)")
    for name, default in vars(Sizes()).items():
        sizes.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=None)
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    for name in vars(Sizes()):
        value = getattr(args, name)
        if value is not None:
            setattr(sizes, name, value)
    return sizes


def _table(results: list[Result]) -> str:
    header = ("benchmark", "figure", "target", "met?")
    rows = [(r.bench, r.figure, r.target, r.verdict) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


class RunTimeout(BaseException):
    """The whole run took longer than its hard limit (a benchmark hung)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `with`, which stops the servers


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise RunTimeout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        say(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    # aiosmtpd (the relay) logs a warning about its own deprecated attribute on every login.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Every wait in the benchmarks has its own deadline; this is the backstop for the run.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.time_limit or (900 if args.quick else 2400))
    sizes = _sizes(args)
    run = Run(sizes, args.work_dir, keep=args.keep, broker=args.broker_persistence)
    info = machine(run.dir)
    info["load average at start"] = load_average()
    info["started"] = now_iso()
    mode = "quick" if args.quick else "full"
    info["mode"] = f"{mode}, broker persistence {run.broker_persistence}"
    results: list[Result] = []
    failed: list[str] = []
    started = time.monotonic()
    say(f"faultmail benchmarks ({info['mode']}) in {run.dir}")
    try:
        for name in names:
            say(f"\n== {name}")
            t0 = time.monotonic()
            rows = attempt(name, functools.partial(BENCHMARKS[name], run))
            if any(r.failed for r in rows):
                failed.append(name)
            results += rows
            say(f"  ({name} took {time.monotonic() - t0:.0f} s)")
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    except RunTimeout:
        say("\nthe run exceeded its time limit (--time-limit); stopped")
        return 1
    finally:
        signal.alarm(0)
        run.close()
    info["load average at end"] = load_average()
    info["duration"] = f"{time.monotonic() - started:.0f} s"
    say("\n" + _table(results))
    notes = [(r.bench, r.note) for r in results if r.note]
    if notes:
        say("\nnotes:")
        for bench, note in notes:
            say(f"  {bench}: {note}")
    say("\nmachine:")
    for key, value in info.items():
        say(f"  {key}: {value}")
    if args.json is not None:
        args.json.write_text(as_json(results, info) + "\n")
        say(f"\nresults written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
