"""``python -m tests.bench.profile``: where the daemon's CPU goes during the end-to-end burst.

The stack of the throughput benchmark's end-to-end run, DKIM off (its own Mosquitto, a
STARTTLS + AUTH relay, N alerts, 2,000 by default, from 20 devices published as a burst,
grouping off, the flood guard lifted), with ``py-spy record --format raw --rate 250 --threads
--full-filenames`` attached to the daemon from just before the start signal until the relay's
250 for the last mail. Prints each thread's share, the top functions by own (self) samples and
by total (inclusive) samples, as percentages of the samples of running threads.

Waits left out: py-spy drops threads it sees as idle, but here it still reported threads
blocked in a C call (executor workers in ``work_queue.get``, paho's ``select``, the event
loop's ``epoll``, the intake's ``queue.get``) as running: over a third of the samples. A sample
whose innermost frame's source line is such a blocking call (WAIT_CALL) is counted as a wait
and left out of the tables; how many were is printed. Not ``--gil`` instead: it would also
drop work done in C with the GIL released (SQLite's steps, TLS, socket writes), a real part of
the cost, which this way stays attributed to the Python line that called it (so does time a
thread spends in fsync, which py-spy may not see as idle).

py-spy pauses the daemon for every sample (its default; --nonblocking would not, at the cost
of torn stacks), so the burst runs slower than without it: read the shares, not the rate.
"""

from __future__ import annotations

import argparse
import linecache
import logging
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common import BenchError, Run, Sizes, Stack, cpu_seconds, received_ts, say
from tests.bench.load import Publishers
from tests.bench.throughput import DELIVERY, burst_spec

RATE = 250  # samples per second
# A source line that blocks in C until there is work: the thread is waiting, not running.
WAIT_CALL = re.compile(
    r"\.get\((block=True|timeout=)|\bselect\.select\(|_selector\.poll\(|\.wait\(|"
    r"\.acquire\(|time\.sleep\("
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*):(?P<line>\d+)\)$")
_ROOTS = sorted(
    {
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        sysconfig.get_paths()["stdlib"],
        str(Path(__file__).resolve().parents[2]),
    },
    key=len,
    reverse=True,
)


@dataclass
class Profile:
    samples: int = 0  # samples of running threads (the tables' 100 %)
    waits: int = 0  # samples left out: the innermost line was a blocking call
    own: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)


def _short(path: str) -> str:
    for root in _ROOTS:
        if path.startswith(root + "/"):
            return path[len(root) + 1 :]
    return path


def _function(frame: str) -> tuple[str, bool]:
    """'func (path:line)' -> ('func (short path)', whether that line is a blocking call)."""
    match = FRAME.match(frame)
    if match is None:
        return frame, False
    path = match["path"]
    source = linecache.getline(path, int(match["line"]))
    return f"{match['func']} ({_short(path)})", bool(WAIT_CALL.search(source))


def parse_raw(text: str) -> Profile:
    """py-spy's raw (collapsed) format: one line per distinct stack, root first, frames joined
    by ';', then a space and its sample count. With --threads the root frame is
    'thread (TID): NAME'. A function counts once per stack for its total, however deep it
    recurses."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = ""
        if frames[0].startswith("thread ("):
            thread = frames[0].partition(": ")[2] or frames[0]
            frames = frames[1:]
        if not frames:
            continue
        names = [_function(frame) for frame in frames]
        if names[-1][1]:
            profile.waits += count
            continue
        profile.samples += count
        profile.threads[thread or "?"] += count
        profile.own[names[-1][0]] += count
        for name in {n for n, _ in names}:
            profile.total[name] += count
    return profile


def table(title: str, counts: Counter[str], samples: int, top: int) -> str:
    lines = [f"{title} (of {samples:,} samples)", "     %  samples  function (file)"]
    for name, count in counts.most_common(top):
        lines.append(f"{100 * count / samples:6.1f}  {count:7,}  {name}")
    return "\n".join(lines)


def _py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise BenchError(
            "py-spy not found next to this Python or on PATH: `make venv` installs it "
            "(the dev extra in pyproject.toml), or `.venv/bin/pip install py-spy`"
        )
    return found


def _wait_attached(log: Path, spy: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """py-spy says "Sampling process ..." once it has attached (it needs ptrace rights)."""
    deadline = time.monotonic() + timeout
    while "Sampling process" not in log.read_text(errors="replace"):
        if spy.poll() is not None:
            raise BenchError(f"py-spy exited with {spy.returncode}: {log.read_text()[-500:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"py-spy did not attach within {timeout:.0f} s: {log.read_text()}")
        time.sleep(0.05)


def record(run: Run, gil: bool = False, dkim: bool = False) -> tuple[Profile, str]:
    """The burst under py-spy; the parsed profile and a line about the run. gil: only samples
    of the thread holding the GIL (Python's own CPU; work in C with the GIL released is out)."""
    spec = burst_spec(run)
    py_spy = _py_spy()
    with Stack(run, "profile") as st:
        daemon = st.daemon(st.config(dkim=dkim, delivery=DELIVERY))
        assert daemon.pid is not None
        raw, log = st.dir / "py-spy.raw", st.dir / "py-spy.log"
        with Publishers(st.broker.host, st.broker.port, spec, run.sizes.publisher_processes) as p:
            with log.open("wb") as out:
                spy = subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        str(RATE),
                        "--threads",
                        "--full-filenames",
                        "--pid",
                        str(daemon.pid),
                        "--output",
                        str(raw),
                        *(["--gil"] if gil else []),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_attached(log, spy)
                cpu0 = cpu_seconds(daemon.pid)
                go = p.go()
                mails = st.relay.wait_for(spec.total, timeout=spec.total / 10 + 120)
                cpu = cpu_seconds(daemon.pid) - cpu0
            finally:
                # SIGINT is py-spy's Ctrl-C: it stops sampling and writes the file.
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(5)
            p.join()
        if not raw.exists():
            raise BenchError(f"py-spy wrote no profile: {log.read_text()[-500:]}")
        text = raw.read_text()
    end = max(received_ts(m) for m in mails)
    about = (
        f"{spec.total} alerts end to end (DKIM {'on' if dkim else 'off'}) in {end - go:.2f} s "
        "under py-spy "
        f"({spec.total / (end - go):,.0f} alerts/s, slowed by sampling); daemon CPU "
        f"{cpu / spec.total * 1000:.2f} ms per alert ({cpu:.2f} s); py-spy at {RATE}/s"
    )
    return parse_raw(text), about


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__)
    parser.add_argument("--alerts", type=int, default=Sizes().throughput_alerts)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (raw profile)")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="only the thread holding the GIL: where Python itself spends CPU (SQLite, TLS and "
        "socket work done with the GIL released drop out)",
    )
    parser.add_argument("--dkim", action="store_true", help="sign every mail (RSA-2048)")
    args = parser.parse_args(argv)
    # aiosmtpd (the relay) logs a warning about its own deprecated attribute on every login.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    run = Run(Sizes(throughput_alerts=args.alerts), None, keep=args.keep, broker="off")
    try:
        profile, about = record(run, args.gil, args.dkim)
    except BenchError as exc:
        say(f"profile failed: {exc}")
        return 1
    finally:
        run.close()
    if profile.samples == 0:
        say("py-spy recorded no samples of running threads")
        return 1
    say(about)
    waited = profile.waits / (profile.waits + profile.samples)
    say(
        f"{profile.waits:,} samples ({100 * waited:.0f} %) were threads blocked in a wait "
        "(innermost line a blocking call) that py-spy counted as running: left out"
    )
    say("\n" + table("threads", profile.threads, profile.samples, args.top))
    say("\n" + table(f"top {args.top} by own samples", profile.own, profile.samples, args.top))
    say("\n" + table(f"top {args.top} by total samples", profile.total, profile.samples, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
