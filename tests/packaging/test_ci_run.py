"""CI's entry point (.ci/run) with apt-get and make replaced by recorders: the order of the
make targets (make test first, then test-compat beside test-deb followed by test-arm64) and
that a failure anywhere fails CI without stopping the other side-by-side job."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ci_run(tmp_path: Path, fail: str | None) -> tuple[int, list[str], str]:
    """.ci/run in a copy of its directory, with apt-get and make replaced by recorders (make
    fails for the target `fail`): its exit status, the make calls and its output."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "make-calls"
    (stubs / "apt-get").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (stubs / "make").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>"{calls}"\n'
        'echo "make $* ran"\n'
        f'[ "$*" = "{fail or "-"}" ] && exit 2\n'
        "exit 0\n",
        encoding="utf-8",
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    made = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
    return done.returncode, made, done.stdout


def test_ci_runs_the_suite_then_compat_beside_the_packages(tmp_path: Path) -> None:
    """CI: make test first; then test-compat beside test-deb followed by test-arm64; success
    only when all of them pass, and the packaging log is printed."""
    status, made, out = _ci_run(tmp_path, None)
    assert status == 0, out
    assert made[0] == "test"
    assert sorted(made[1:]) == ["test-arm64", "test-compat", "test-deb ARCH=amd64"]
    assert made.index("test-deb ARCH=amd64") < made.index("test-arm64")
    assert "make test-arm64 ran" in out  # the packaging log, printed


@pytest.mark.parametrize(
    ("fail", "not_run"),
    [
        ("test", {"test-compat", "test-deb ARCH=amd64", "test-arm64"}),
        ("test-deb ARCH=amd64", {"test-arm64"}),
    ],
)
def test_ci_stops_at_a_failure_before_what_depends_on_it(
    tmp_path: Path, fail: str, not_run: set[str]
) -> None:
    status, made, out = _ci_run(tmp_path, fail)
    assert status != 0, out
    assert not_run.isdisjoint(made), made


@pytest.mark.parametrize("fail", ["test-compat", "test-arm64"])
def test_ci_fails_when_either_side_by_side_job_fails(tmp_path: Path, fail: str) -> None:
    """A failure on one side does not stop the other, and fails CI."""
    status, made, out = _ci_run(tmp_path, fail)
    assert status != 0, out
    assert {"test-compat", "test-deb ARCH=amd64", "test-arm64"} <= set(made)
