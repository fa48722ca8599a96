"""Fixtures of the fault-injection suite and its end-of-run report.

- `account`: compares what a test published with the daemon's alerts and the relay's mails
  (see support.account), records the figures under the test's name and fails the test on any
  broken invariant (two Message-IDs for one alert, a message stored twice, ...);
- `proxy`: a factory for FaultProxy instances in front of the broker or the relay;
- `tmpfs`: a small tmpfs (1 MiB) for a disk-full state dir, unmounted even on failure.

At the end of the run a table "scenario | published | delivered | duplicated | lost | notes"
is printed and written as JSON into pytest's base temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.support import Figures, Key, Row
from tests.faults.support import account as compute_account
from tests.harness.relay import ReceivedMail

_RECORDS = pytest.StashKey[list[dict[str, Any]]]()
_REPORT_DIR = pytest.StashKey[Path]()
REPORT_NAME = "faults-report.json"


class Accountant(Protocol):
    def __call__(
        self,
        published: Iterable[Key],
        alerts: list[Row],
        relay_mails: list[ReceivedMail],
        *,
        expect: Callable[[Row], bool] | None = None,
        notes: str = "",
    ) -> Figures: ...


def report_row(
    request: pytest.FixtureRequest, started: float, remarks: list[str], **figures: Any
) -> None:
    """One row of the fault report (printed and saved at the end of the session); its notes
    are `remarks` plus the first problem and the first lost alert, if any."""
    config = request.config
    config.stash[_REPORT_DIR] = request.getfixturevalue("tmp_path_factory").getbasetemp()
    if figures.get("problems"):
        remarks = [*remarks, f"BROKEN: {figures['problems'][0]}"]
    if figures.get("lost_detail"):
        remarks = [*remarks, f"LOST: {figures['lost_detail'][0]}"]
    notes = "; ".join(r for r in remarks if r)
    row = {"scenario": request.node.name.removeprefix("test_"), **figures, "notes": notes}
    row["seconds"] = round(time.monotonic() - started, 1)
    config.stash.setdefault(_RECORDS, []).append(row)


@pytest.fixture
def account(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Accountant:
    """Account for one scenario, record its figures for the report, assert the invariants."""
    started = time.monotonic()

    def accountant(
        published: Iterable[Key],
        alerts: list[Row],
        relay_mails: list[ReceivedMail],
        *,
        expect: Callable[[Row], bool] | None = None,
        notes: str = "",
    ) -> Figures:
        figures = compute_account(published, alerts, relay_mails, expect=expect)
        remarks = [notes] if notes else []
        if figures.mails != figures.delivered:  # digests: several alerts in one mail
            remarks.append(f"mails={figures.mails}")
        if figures.duplicate_mails != figures.duplicated:
            remarks.append(f"duplicate mails={figures.duplicate_mails}")
        report_row(
            request,
            started,
            remarks,
            published=figures.published,
            delivered=figures.delivered,
            duplicated=figures.duplicated,
            lost=figures.lost,
            mails=figures.mails,
            duplicate_mails=figures.duplicate_mails,
            states=figures.states,
            problems=figures.problems,
            lost_detail=figures.lost_detail,
        )
        assert not figures.problems, "\n".join(figures.problems)
        return figures

    return accountant


ProxyFactory = Callable[..., FaultProxy]


@pytest.fixture
def proxy() -> Iterator[ProxyFactory]:
    """proxy(target) -> a started FaultProxy forwarding to target.host:target.port."""
    started: list[FaultProxy] = []

    def factory(target: Any, *, name: str = "proxy") -> FaultProxy:
        instance = FaultProxy(target.host, target.port, name=name)
        started.append(instance)
        return instance.start()

    try:
        yield factory
    finally:
        for instance in reversed(started):
            instance.stop()


def _mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted on a fresh directory (we run as root); unmounted afterwards.

    Request it before `daemon` in the test's arguments so the daemon is stopped first.
    """
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs on {mount_point} (the disk-full test needs root and "
            f"mount): exit {result.returncode}: {result.stderr.strip() or result.stdout.strip()}",
            pytrace=False,
        )
    try:
        yield mount_point
    finally:
        for attempt in range(20):
            if not _mounted(mount_point):
                break
            lazy = ["-l"] if attempt >= 10 else []
            subprocess.run(["umount", *lazy, str(mount_point)], capture_output=True, check=False)
            time.sleep(0.1)
        assert not _mounted(mount_point), f"could not unmount the tmpfs on {mount_point}"


def remount(mount_point: Path, size: str) -> None:
    """Give the tmpfs a new size (space back, or less)."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(mount_point)],
        check=True,
        capture_output=True,
    )


def _table(records: list[dict[str, Any]]) -> list[str]:
    header = ["scenario", "published", "delivered", "duplicated", "lost", "notes"]
    rows = [[str(r[h]) for h in header] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]

    def line(cells: list[str]) -> str:
        head = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells[:-1])
        ]
        return " | ".join([*head, cells[-1]]).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths) + "-+-" + "-" * 5]
    out += [line(row) for row in rows]
    return out


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    records = config.stash.get(_RECORDS, [])
    if not records:
        return
    terminalreporter.write_sep("=", "faultmail fault-injection report")
    for text in _table(records):
        terminalreporter.write_line(text)
    base = config.stash.get(_REPORT_DIR, None)
    if base is not None:
        path = base / REPORT_NAME
        path.write_text(json.dumps(records, indent=2) + "\n")
        terminalreporter.write_line(f"report written to {path}")
