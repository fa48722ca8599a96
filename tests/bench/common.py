"""What every benchmark shares: the servers of one scenario, the daemon's config, the sizes,
readings from /proc and the outbox, results, and a description of the machine."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.parser
import email.policy
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.compose import parse_id_ranges
from tests.harness.daemon import Daemon, write_config
from tests.harness.mosquitto import MOSQUITTO, Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.relay import ReceivedMail, Relay

SMTP_USER = "gw@example.com"
RECIPIENT = "ops@example.com"
FAULT_TOPIC = "devices/+/fault"
GATEWAY_ID = "gw-bench-01"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024  # a mebibyte: the targets are in MiB


# -- sizes ---------------------------------------------------------------------------------------


@dataclass
class Sizes:
    """How big each benchmark is. `FULL` follows the issue; `QUICK` is a smoke run (~2 min)."""

    throughput_alerts: int = 2000
    throughput_devices: int = 20
    publisher_processes: int = 2
    latency_rate: float = 20.0
    latency_seconds: float = 60.0
    storm_rate: float = 5000.0
    storm_devices: int = 50
    storm_seconds: float = 8.0
    storm_probes: int = 5
    drain_alerts: int = 10_000
    drain_spread: float = 15.0
    mail_cap: int = 30
    leak_alerts: int = 100_000
    leak_rate: float = 3000.0
    leak_checkpoints: int = 5
    idle_hour_poll: float = 0.05
    idle_hour_seconds: float = 40.0
    idle_seconds: float = 60.0
    startup_runs: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            throughput_alerts=600,
            latency_seconds=10.0,
            storm_seconds=3.0,
            storm_probes=2,
            drain_alerts=2000,
            drain_spread=8.0,
            leak_alerts=10_000,
            leak_checkpoints=3,
            idle_hour_seconds=8.0,
            idle_seconds=15.0,
            startup_runs=3,
        )


# -- results -------------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the final table. met is None when there is no target or nothing to compare."""

    bench: str
    figure: str
    target: str = ""
    met: bool | None = None
    value: float | None = None
    unit: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    failed: bool = False

    @property
    def verdict(self) -> str:
        if self.failed:
            return "FAILED"
        if self.met is None:
            return "-" if not self.target else "n/a"
        return "yes" if self.met else "NO"


def failure(label: str, exc: BaseException) -> Result:
    """The row for a benchmark that could not produce its figure (the traceback goes to stderr)."""
    traceback.print_exception(exc)
    return Result(f"{label}: FAILED", f"{type(exc).__name__}: {exc}"[:110], failed=True)


def attempt(label: str, fn: Callable[[], list[Result]]) -> list[Result]:
    """Run one part of a benchmark; a failure becomes a FAILED row and the others still run."""
    try:
        return fn()
    except Exception as exc:
        return [failure(label, exc)]


def at_least(value: float, target: float) -> bool:
    return value >= target


def at_most(value: float, target: float) -> bool:
    return value <= target


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-p * len(ordered) // 100)))  # ceil(p/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def say(text: str = "") -> None:
    print(text, flush=True)


class BenchError(RuntimeError):
    """A benchmark could not produce its figure; the message says why."""


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> float:
    """Poll until predicate() is true; return time.time() at that moment. BenchError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.time()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what or 'condition'}")
        time.sleep(interval)


# -- the relay ------------------------------------------------------------------------------------


class SinkRelay(Relay):
    """The harness relay (aiosmtpd, STARTTLS required, AUTH required) as a leaner sink.

    The harness relay parses every accepted message twice with the full email parser (for its
    `mails` and its `attempts`), which costs it about as much CPU per mail as the daemon spends
    on composing and submitting it; sharing two cores, that would halve every mail figure. Here
    only the headers are parsed (all the benchmarks read), once, and the time is taken first.
    Fault injection is not used by the benchmarks, so `attempts` stays empty.
    """

    _header_parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    def _record_mail(self, server: Any, session: Any, envelope: Any, data: bytes) -> ReceivedMail:
        received_at = datetime.datetime.now(datetime.UTC)
        message = self._header_parser.parsebytes(data)
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message=message,
            received_at=received_at,
            tls=True,
            auth_user=session.auth_data if isinstance(session.auth_data, str) else None,
        )
        self._store(mail)
        return mail


# -- the run and its scenarios -------------------------------------------------------------------


class Run:
    """One benchmark run: a work directory, one throw-away CA, one DKIM key, the SMTP password."""

    def __init__(self, sizes: Sizes, work_root: Path | None, *, keep: bool, broker: str) -> None:
        self.sizes = sizes
        self.keep = keep
        self.broker_persistence = broker
        base = Path(work_root) if work_root is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="faultmail-bench-", dir=base))
        self.pki = TestPKI(name="faultmail bench CA")
        self.password = secrets.token_urlsafe(18)
        self.password_file = self.dir / "smtp-password"
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(self.password + "\n")
        self._dkim_key: Path | None = None

    @property
    def dkim_key(self) -> Path:
        """An RSA-2048 DKIM key (made once per run with the daemon's own keygen)."""
        if self._dkim_key is None:
            from agent.signing import keygen

            self._dkim_key = keygen("sel", "example.com", self.dir / "dkim.key").path
        return self._dkim_key

    def close(self) -> None:
        if self.keep:
            say(f"work directory kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Stack:
    """The servers of one scenario: a Mosquitto, a STARTTLS+AUTH relay (up or not) and daemons.

    ``with Stack(run, "name") as stack:`` starts the broker (and the relay unless relay_up is
    False) and closes daemons, relay and broker on the way out, whatever happened.
    """

    def __init__(self, run: Run, name: str, *, relay_up: bool = True) -> None:
        self.run = run
        self.name = name
        self.dir = run.dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.relay_up = relay_up
        # "recommended": the harness writes config/mosquitto-faultmail.conf's settings (save on
        # every change); "off": sessions and queues in memory only (see README.md for why).
        self.broker = Mosquitto(
            self.dir / "mosquitto", persistence=run.broker_persistence == "recommended"
        )
        self.relay = SinkRelay(
            self.dir / "relay", run.pki, mode="starttls", users={SMTP_USER: run.password}
        )
        self.daemons: list[Daemon] = []
        self.state_dir = self.dir / "state"
        self._placeholder: socket.socket | None = None

    def __enter__(self) -> Stack:
        self.broker.start()
        if self.relay_up:
            self.relay.start()
        else:
            self.relay_down()
        return self

    def relay_down(self) -> None:
        """Stop the relay and hold its port with a bound, non-listening socket: connections
        are refused as from a relay that is down, and no outgoing connection on this machine
        can be given the port as its local port meanwhile (the relay must get it back)."""
        self.relay.stop()
        if self._placeholder is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # The relay's own connections may still be in TIME_WAIT; any explicit bind keeps
            # the port out of the kernel's choice of local ports all the same.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.relay.host, self.relay.port))
            self._placeholder = sock

    def relay_back(self) -> float:
        """Start the relay on its port again; time.time() when it listens."""
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self.relay.start()
        return time.time()

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons:
            with contextlib.suppress(Exception):
                daemon.close()
        with contextlib.suppress(Exception):
            self.relay.stop()
        if self._placeholder is not None:
            self._placeholder.close()
        with contextlib.suppress(Exception):
            self.broker.close()

    def config(
        self,
        *,
        dkim: bool = False,
        grouping: bool = False,
        flood_guard: bool = False,
        mqtt: dict[str, Any] | None = None,
        smtp: dict[str, Any] | None = None,
        delivery: dict[str, Any] | None = None,
        mail: dict[str, Any] | None = None,
        outbox: dict[str, Any] | None = None,
        name: str = "faultmail.toml",
    ) -> Path:
        """The daemon config for this stack.

        grouping=False: one mail per alert (repeat_window 0, no digests); True: the shipped
        defaults (repeat_window 600, digest_threshold 20). flood_guard=False lifts the per-device
        rate limit far out of the way (as the integration tests do); True keeps the shipped one.
        """
        mqtt_table: dict[str, Any] = {
            "host": self.broker.host,
            "port": self.broker.port,
            "protocol": "5",
            "tls": False,
            "client_id": f"faultmail-{GATEWAY_ID}",
            "topics": [FAULT_TOPIC],
        }
        smtp_table: dict[str, Any] = {
            "host": "localhost",
            "port": self.relay.port,
            "security": "starttls",
            "ca_file": str(self.relay.ca_file),
            "username": SMTP_USER,
            "password_file": str(self.run.password_file),
            "from": f"Gateway Bench <{SMTP_USER}>",
            "timeout": 10,
        }
        delivery_table: dict[str, Any] = {}
        mail_table: dict[str, Any] = (
            {"repeat_window": 600, "digest_threshold": 20}
            if grouping
            else {"repeat_window": 0, "digest_threshold": 10_000_000, "device_budget": 0}
        )
        flood_table: dict[str, Any] = (
            {}
            if flood_guard
            else {"rate": 10_000.0, "burst": 1_000_000, "block_threshold": 1_000_000}
        )
        outbox_table: dict[str, Any] = {}
        for table, update in (
            (mqtt_table, mqtt),
            (smtp_table, smtp),
            (delivery_table, delivery),
            (mail_table, mail),
            (outbox_table, outbox),
        ):
            table.update(update or {})
        extra: dict[str, dict[str, Any]] = {"mail": mail_table}
        if flood_table:
            extra["flood"] = flood_table
        if outbox_table:
            extra["outbox"] = outbox_table
        if dkim:
            extra["dkim"] = {
                "domain": "example.com",
                "selector": "sel",
                "private_key_file": str(self.run.dkim_key),
            }
        return write_config(
            self.dir / name,
            gateway_id=GATEWAY_ID,
            state_dir=self.state_dir,
            site="Bench site",
            mqtt=mqtt_table,
            smtp=smtp_table,
            policy={"allowed_domains": ["example.com"], "allowed_recipients": []},
            delivery=delivery_table or None,
            logging={"format": "json", "level": "info"},
            routes=[{"topics": [FAULT_TOPIC], "min_severity": "info", "to": [RECIPIENT]}],
            extra=extra,
        )

    def daemon(self, config: Path, *, start: bool = True, timeout: float = 20.0) -> Daemon:
        daemon = Daemon(config, self.dir / f"daemon-{len(self.daemons)}")
        self.daemons.append(daemon)
        if start:
            daemon.start(timeout)
        return daemon

    def outbox(self) -> OutboxReader:
        return OutboxReader(self.state_dir / "outbox.db")


# -- reading the outbox (read-only, as `faultmail alerts` does) ----------------------------------


class OutboxReader:
    """Read-only queries on the daemon's outbox, cheap enough to poll while it runs.

    `faultmail alerts --json` gives the same rows, but starting a Python process per poll would
    cost the daemon CPU on a two-core machine; this reads the same file the same way (mode=ro).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
            self._conn.execute("PRAGMA busy_timeout = 5000")
        return self._conn

    def counts(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        rows = self.db().execute("SELECT state, COUNT(*) FROM alerts GROUP BY state")
        return {str(state): int(n) for state, n in rows}

    def total(self) -> int:
        return sum(self.counts().values())

    def alerts(self) -> dict[int, tuple[str, int | None, str, float, float | None]]:
        """id → (uid, seq, state, received_at, sent_at)."""
        rows = self.db().execute("SELECT id, uid, seq, state, received_at, sent_at FROM alerts")
        return {int(r[0]): (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def received_span(self) -> tuple[float, float]:
        row = self.db().execute("SELECT MIN(received_at), MAX(received_at) FROM alerts").fetchone()
        return float(row[0]), float(row[1])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def mail_alert_ids(mail: ReceivedMail) -> list[int]:
    value = mail.message["X-Faultmail-Alert-Ids"]
    return parse_id_ranges(str(value or ""))


def mail_kind(mail: ReceivedMail) -> str:
    return str(mail.message["X-Faultmail-Kind"] or "")


def received_ts(mail: ReceivedMail) -> float:
    return mail.received_at.timestamp()


# -- /proc ---------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, ... in bytes, and the context-switch counters, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        number = int(parts[0])
        values[key] = number * 1024 if len(parts) > 1 and parts[1] == "kB" else number
    return values


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    status = proc_status(pid)
    return status["VmRSS"], status["VmHWM"]


def rss_parts(pid: int) -> str:
    """VmRSS split into private (RssAnon: heap, arenas, stacks) and file-backed (RssFile:
    the interpreter and shared libraries, pages other processes may share)."""
    status = proc_status(pid)
    return (
        f"{fmt_mb(status['VmRSS'])} = {fmt_mb(status['RssAnon'])} anon + "
        f"{fmt_mb(status['RssFile'])} file"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Per thread: nanoseconds on a CPU so far (/proc/PID/task/TID/schedstat, exact, where
    utime/stime are counted in 10 ms ticks)."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ValueError):
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return out


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread: (voluntary, nonvoluntary) context switches so far."""
    out: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, KeyError):
            status = _task_status(pid, task.name)
            out[int(task.name)] = (
                status["voluntary_ctxt_switches"],
                status["nonvoluntary_ctxt_switches"],
            )
    return out


def _task_status(pid: int, tid: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    return values


def fmt_mb(value: float) -> str:
    return f"{value / MB:.1f} MiB"


# -- the machine ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _filesystem(path: Path) -> str:
    best, kind, device = "", "?", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) >= len(best):
                best, kind, device = mount, fstype, dev
    return f"{kind} ({device})"


def _mosquitto_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
        first = out.splitlines()[0] if out else ""
        return first.replace("mosquitto version", "").strip() or "?"
    return "?"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def machine(work_dir: Path) -> dict[str, str]:
    mem = proc_status_meminfo()
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    return {
        "cpu": _cpu_model(),
        "cores": f"{cores} logical ({usable} usable by this process)",
        "memory": f"{mem / MB / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}"
        f" ({sys.executable})",
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": _mosquitto_version(),
        "libraries": ", ".join(
            f"{name} {_version(name)}" for name in ("paho-mqtt", "aiosmtplib", "dkimpy", "aiosmtpd")
        ),
        "work dir": f"{work_dir} on {_filesystem(work_dir)}",
    }


def proc_status_meminfo() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(results: list[Result], info: dict[str, str]) -> str:
    return json.dumps(
        {"machine": info, "results": [dataclasses.asdict(r) for r in results]}, indent=2
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        say(f"  ({label}: {time.monotonic() - started:.1f} s)")
