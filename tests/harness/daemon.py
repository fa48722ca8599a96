"""The real faultmail daemon as a subprocess, with systemd-style readiness, and its config file."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness import _process
from tests.harness._service import Service

REPO_ROOT = Path(__file__).resolve().parents[2]

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH = 107

# Variables that steer the daemon's process only; the CLI invocations must not inherit them.
_DAEMON_ONLY_ENV = ("FAULTMAIL_FAILPOINTS", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class DaemonError(RuntimeError):
    """The daemon did not start, stop or answer as expected; the message carries its log tail."""


class Daemon(_process.Supervised, Service):
    """Runs ``python -m agent run --config <path>`` from the repository root (or `source`).

    Readiness follows systemd's notify protocol: the harness binds an AF_UNIX datagram socket,
    passes it as NOTIFY_SOCKET, and `start` returns once ``READY=1`` arrives. A thread keeps
    reading that socket (so WATCHDOG=1 and STATUS= messages never block the daemon) and keeps
    every datagram in `notifications`. stdout and stderr of every run are appended to `log_path`.
    """

    def __init__(
        self,
        config_path: Path,
        work_dir: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        source: Path = REPO_ROOT,
    ) -> None:
        self.config_path = Path(config_path)
        # The checkout whose `agent` runs: this one, or another (tests.bench.pair compares two).
        self.source = Path(source)
        self.work_dir = Path(work_dir) if work_dir is not None else self.config_path.parent
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = dict(env or {})
        self.python = python
        self.log_path = self.work_dir / "daemon.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._runs = 0
        self._notify_lock = threading.Lock()
        self._notified = threading.Condition(self._notify_lock)
        self._notifications: list[str] = []
        self._notify_dir: Path | None = None
        self._notify_sock: socket.socket | None = None
        self._notify_thread: threading.Thread | None = None
        self._closing = threading.Event()

    # -- environment ---------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ONLY_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        if self.source != REPO_ROOT:
            # Ahead of an editable install of this checkout.
            env["PYTHONPATH"] = str(self.source)
        return env

    def _daemon_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(self.env)
        assert self.notify_socket_path is not None
        env["NOTIFY_SOCKET"] = str(self.notify_socket_path)
        return env

    def _cli_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update({k: v for k, v in self.env.items() if k not in _DAEMON_ONLY_ENV})
        return env

    # -- notify socket -------------------------------------------------------------------------

    @property
    def notify_socket_path(self) -> Path | None:
        if self._notify_sock is None:
            return None
        return Path(self._notify_sock.getsockname())

    def _open_notify_socket(self) -> None:
        if self._notify_sock is not None:
            return
        path = self.work_dir / "notify.sock"
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            # Deep tmp dirs exceed sun_path; fall back to a short private directory.
            self._notify_dir = Path(tempfile.mkdtemp(prefix="fm-notify-"))
            path = self._notify_dir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(0.1)
        self._notify_sock = sock
        self._closing.clear()
        self._notify_thread = threading.Thread(
            target=self._read_notifications, name="daemon-notify", daemon=True
        )
        self._notify_thread.start()

    def _read_notifications(self) -> None:
        sock = self._notify_sock
        assert sock is not None
        while not self._closing.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._notified:
                self._notifications.extend(
                    line for line in data.decode("utf-8", "replace").split("\n") if line
                )
                self._notified.notify_all()

    @property
    def notifications(self) -> list[str]:
        """Every sd_notify assignment received (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1)."""
        with self._notify_lock:
            return list(self._notifications)

    def wait_for_notification(self, text: str, timeout: float = 10.0, *, after: int = 0) -> bool:
        """Wait until a notification equal to text arrives (looking from index after)."""
        with self._notified:
            return self._notified.wait_for(lambda: text in self._notifications[after:], timeout)

    # -- lifecycle -----------------------------------------------------------------------------
    # (`running` and `pid` come from _process.Supervised)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> Daemon:
        """Start the daemon and wait for READY=1; DaemonError (with the log) otherwise."""
        if self.running:
            raise DaemonError("daemon already running")
        self._open_notify_socket()
        self._runs += 1
        with self._notify_lock:
            seen = len(self._notifications)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== harness: start #{self._runs} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [self.python, "-m", "agent", "run", "--config", str(self.config_path)],
                cwd=self.source,
                env=self._daemon_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _process.track(self._proc)
        deadline = time.monotonic() + timeout
        while True:
            with self._notified:
                ready = self._notified.wait_for(
                    lambda: "READY=1" in self._notifications[seen:], timeout=0.1
                )
            if ready:
                return self
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise DaemonError(f"daemon exited with {code} before READY=1:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonError(
                    f"no READY=1 from the daemon within {timeout} s:\n{self.log_tail()}"
                )

    def _forget(self) -> None:
        if self._proc is not None:
            _process.untrack(self._proc)

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash, as far as the daemon can tell."""
        if self._proc is None:
            return None
        return _process.kill(self._proc)

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds to exit). On timeout: SIGKILL, then DaemonError."""
        proc = self._proc
        if proc is None:
            raise DaemonError("daemon was never started")
        started = time.monotonic()
        code, killed = _process.terminate(proc, timeout)
        if killed:
            raise DaemonError(
                f"daemon still running {timeout} s after SIGTERM (killed):\n{self.log_tail()}"
            )
        return code, time.monotonic() - started

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the daemon to exit on its own (a failpoint, a fatal error)."""
        if self._proc is None:
            raise DaemonError("daemon was never started")
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"daemon still running after {timeout} s") from None
        self._forget()
        return code

    def restart(self, *, kill: bool = False, timeout: float = 15.0) -> Daemon:
        """Stop (SIGTERM, or SIGKILL with kill=True) if running, then `start` again."""
        if self.running:
            if kill:
                self.kill()
            else:
                self.terminate(timeout)
        return self.start(timeout)

    def close(self) -> None:
        """Kill the daemon if it still runs, stop the notify reader and remove its socket."""
        self.kill()
        self._closing.set()
        if self._notify_thread is not None:
            self._notify_thread.join(5)
            self._notify_thread = None
        if self._notify_sock is not None:
            path = self.notify_socket_path
            self._notify_sock.close()
            self._notify_sock = None
            if path is not None:
                path.unlink(missing_ok=True)
        if self._notify_dir is not None:
            self._notify_dir.rmdir()
            self._notify_dir = None

    # -- inspection ----------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout/stderr, across restarts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return _process.tail(self.log_path, lines)

    def log_records(self) -> list[dict[str, Any]]:
        """The log lines that parse as JSON objects (logging.format = "json")."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    records.append(value)
        return records

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a log line matches the regular expression; DaemonError otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise DaemonError(f"no log line matching {pattern!r}:\n{self.log_tail()}")
            time.sleep(0.05)

    def cli(
        self, *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m agent *args --config <path>`` and capture its output (text)."""
        run_env = self._cli_env()
        if env is not None:
            run_env.update(env)
        return subprocess.run(
            [self.python, "-m", "agent", *args, "--config", str(self.config_path)],
            cwd=self.source,
            env=run_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def alerts(self) -> list[dict[str, Any]]:
        """``alerts --json``: one JSON object per line; DaemonError if the command fails."""
        result = self.cli("alerts", "--json")
        if result.returncode != 0:
            raise DaemonError(
                f"alerts --json exited with {result.returncode}:\n{result.stderr}{result.stdout}"
            )
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def wait_for_alerts(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll `alerts` until predicate(alerts) is true; return them. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.alerts()
            if predicate(alerts):
                return alerts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"alerts did not match within {timeout} s: {alerts}\n{self.log_tail()}"
                )
            time.sleep(interval)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.returncode})"
        return f"<Daemon pid={self.pid} {state} config={self.config_path}>"


# -- configuration file ------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    # JSON's string escapes are a subset of TOML basic-string escapes. ensure_ascii=False keeps
    # astral characters whole (JSON would write surrogate pairs, which TOML forbids); DEL is
    # the one control character JSON leaves raw and TOML does not allow.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One TOML value: string, bool, int, float, path, list or (inline) table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        return _toml_string(os.fspath(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _table(name: str, values: Mapping[str, Any], *, array: bool = False) -> list[str]:
    header = f"[[{name}]]" if array else f"[{name}]"
    lines = [header]
    # TOML has no null: a None value leaves the key out (the daemon's default applies).
    lines += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return [*lines, ""]


def write_config(
    path: Path,
    *,
    gateway_id: str,
    state_dir: Path | str,
    mqtt: Mapping[str, Any],
    smtp: Mapping[str, Any],
    policy: Mapping[str, Any],
    routes: Sequence[Mapping[str, Any]],
    delivery: Mapping[str, Any] | None = None,
    logging: Mapping[str, Any] | None = None,
    site: str | None = "Test site",
    extra: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Write the daemon's TOML config; ``extra`` adds more [tables] (a list: [[tables]])."""
    gateway = {"id": gateway_id, "state_dir": state_dir, "site": site}
    lines = _table("gateway", gateway)
    lines += _table("mqtt", mqtt)
    lines += _table("smtp", smtp)
    lines += _table("policy", policy)
    if delivery is not None:
        lines += _table("delivery", delivery)
    if logging is not None:
        lines += _table("logging", logging)
    for name, values in (extra or {}).items():
        if isinstance(values, Sequence):  # a list of tables: [[name]] each
            for table in values:
                lines += _table(name, table, array=True)
        else:
            lines += _table(name, values)
    for route in routes:
        lines += _table("routes", route, array=True)
    text = "\n".join(lines)
    tomllib.loads(text)  # a harness bug should fail here, not as a daemon config error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
