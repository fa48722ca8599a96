"""A real DNS server (dnsmasq, from Debian's dnsmasq-base) on a loopback port, serving the TXT
records a test gives it: the independent counterpart of the in-process `tests.harness.dns`.

``dnsmasq --keep-in-foreground`` with no configuration file, no /etc/hosts, no upstream servers
(``--no-resolv``) and no DHCP, bound to 127.0.0.1 only (``--bind-interfaces``); every name
under the ``local`` domains that has no record gets NXDOMAIN from dnsmasq itself instead of
being forwarded. Records are fixed at start: `restart` after changing them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.harness import _process
from tests.harness._service import Service
from tests.harness.ports import LOOPBACK, free_port, port_accepts

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class DnsmasqError(RuntimeError):
    """dnsmasq did not start as asked; the message carries its log."""


def _quoted(text: str) -> str:
    # In a configuration file dnsmasq takes a quoted string whole (commas and spaces included)
    # and knows backslash escapes inside it; on its command line quotes would be kept as text.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Dnsmasq(_process.Supervised, Service):
    """``dnsmasq --keep-in-foreground --port=N --listen-address=127.0.0.1 ...`` in work_dir.

    txt(name, *strings) adds one TXT record made of those character-strings (each at most 255
    octets, RFC 1035 3.3.14); calling it again for the same name adds another record.
    """

    def __init__(self, work_dir: Path, *, local: Iterable[str] = ("example.com",)) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.port = free_port()
        self.local = tuple(local)
        self.log_path = self.work_dir / "dnsmasq.log"
        self.records_path = self.work_dir / "records.conf"
        self._records: list[tuple[str, tuple[str, ...]]] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def txt(self, name: str, *strings: str) -> None:
        if not strings or any(len(s.encode()) > 255 for s in strings):
            raise ValueError(f"{name}: give one or more strings of at most 255 octets")
        self._records.append((name, strings))

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form `faultmail doctor --resolver` takes."""
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        args = [
            DNSMASQ,
            "--keep-in-foreground",
            # Only our records file: never /etc/dnsmasq.conf or /etc/dnsmasq.d.
            f"--conf-file={self.records_path}",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            f"--listen-address={self.host}",
            f"--port={self.port}",
            "--pid-file=",
            f"--log-facility={self.log_path}",
            "--log-queries",
        ]
        if os.geteuid() == 0:
            # As root dnsmasq changes to the user "dnsmasq", which only the full package
            # creates; "nobody" exists everywhere.
            args.append("--user=nobody")
        args += [f"--local=/{domain}/" for domain in self.local]
        return args

    def _write_records(self) -> None:
        lines = [
            f"txt-record={name}," + ",".join(_quoted(s) for s in strings)
            for name, strings in self._records
        ]
        self.records_path.write_text("".join(line + "\n" for line in lines))

    # -- lifecycle -----------------------------------------------------------------------------
    # (`running` and `pid` come from _process.Supervised)

    def start(self, timeout: float = 10.0) -> Dnsmasq:
        """Start it and wait until its TCP port accepts (it binds UDP first); a port taken
        meanwhile is replaced by another, twice at most."""
        if self.running:
            raise DnsmasqError("dnsmasq is already running")
        if not os.access(DNSMASQ, os.X_OK):
            raise DnsmasqError(f"{DNSMASQ} missing: apt-get install dnsmasq-base (.ci/run does)")
        self._write_records()
        for attempt in range(3):
            self.log_path.touch()
            os.chmod(self.log_path, 0o666)  # written after dnsmasq has changed user
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            _process.track(self._proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if port_accepts(self.host, self.port, timeout=0.2):
                    return self
                time.sleep(0.05)
            _process.kill(self._proc)
            stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            self._proc = None
            if "Address already in use" not in stderr or attempt == 2:
                raise DnsmasqError(
                    f"dnsmasq did not start on {self.address}: {stderr}\n{self.log_text()}"
                )
            self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        _process.terminate(self._proc, timeout)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def restart(self) -> Dnsmasq:
        """Stop and start again on the same port with the records as they are now."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queried(self) -> list[tuple[str, str]]:
        """(type, name) of every query logged so far (``query[TXT] name from 127.0.0.1``)."""
        found = []
        for line in self.log_text().splitlines():
            _, marker, rest = line.partition(" query[")
            if marker:
                rdtype, _, tail = rest.partition("] ")
                found.append((rdtype, tail.split(" ", 1)[0]))
        return found

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dnsmasq {self.address} {state} records={len(self._records)}>"
