"""Test hooks stay out of what a gateway runs. The Debian package's wheel is built from the files
`packaging/pkgtool.py package-sources` lists; a tree of exactly those files, run the way the
package's launcher runs it, cannot import the test fakes and ignores FAULTMAIL_FAILPOINTS, while
the daemon run from the repository still honours it (the fault suite depends on that)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import DaemonConfigFactory, DaemonFactory
from tests.harness.daemon import REPO_ROOT, Daemon
from tests.harness.mosquitto import Mosquitto
from tests.harness.publisher import publish_many
from tests.harness.relay import Relay
from tests.integration.support import eventually, fault

pytestmark = pytest.mark.integration

FAILPOINTS = "FAULTMAIL_FAILPOINTS"

# Stands in for the interpreter: `python -m agent ...` and `python -c CODE` run as the package's
# launcher runs (`python3 -IS`, the packaged tree first on sys.path), with this environment's
# dependencies after it (without their .pth files: the development install's editable finder
# would map `agent` back to the repository). It refuses to run if `agent` is not the copy.
_LAUNCHER = """\
#!{python} -IS
import runpy, sys
SITE = {site!r}
sys.path.insert(0, SITE)
sys.path.extend({dependencies!r})
import agent
if not agent.__file__.startswith(SITE + "/"):
    raise SystemExit(f"agent imported from {{agent.__file__}}, not from {{SITE}}")
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
elif sys.argv[1] == "-c":
    code, sys.argv = sys.argv[2], ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"), {{"__name__": "__main__"}})
else:
    raise SystemExit(f"unexpected arguments {{sys.argv[1:]}}")
"""


def package_sources() -> list[str]:
    """What build-deb.sh builds faultmail's wheel from, asked the way build-deb.sh asks."""
    result = subprocess.run(
        [sys.executable, "-I", str(REPO_ROOT / "packaging" / "pkgtool.py"), "package-sources"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.fixture
def packaged_python(tmp_path: Path) -> Path:
    """An interpreter whose `agent` is a copy of exactly the packaged files."""
    site = tmp_path / "site-packages"
    for rel in package_sources():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, site / rel)
    launcher = tmp_path / "packaged-python"
    paths = sysconfig.get_paths()
    dependencies = sorted({paths["purelib"], paths["platlib"]})
    launcher.write_text(
        _LAUNCHER.format(python=sys.executable, site=str(site), dependencies=dependencies)
    )
    launcher.chmod(0o755)
    return launcher


def run_code(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_packaged_tree_has_no_test_fakes_and_no_failpoints(packaged_python: Path) -> None:
    """From the packaged files `import agent.testing` fails, failpoints are not available, and
    the CLI still runs."""
    fakes = run_code(packaged_python, "import agent.testing")
    assert fakes.returncode == 1 and "ModuleNotFoundError" in fakes.stderr, fakes.stderr
    check = run_code(packaged_python, "from agent.failpoints import available; print(available())")
    assert check.returncode == 0 and check.stdout == "False\n", check.stderr
    cli = subprocess.run(
        [str(packaged_python), "-m", "agent", "--help"], capture_output=True, text=True, check=False
    )
    assert cli.returncode == 0 and "doctor" in cli.stdout, cli.stderr


def test_packaged_daemon_ignores_failpoints_and_the_repository_daemon_honours_them(
    tmp_path: Path,
    packaged_python: Path,
    daemon: DaemonFactory,
    daemon_config: DaemonConfigFactory,
    mosquitto: Mosquitto,
    relay: Relay,
) -> None:
    """FAULTMAIL_FAILPOINTS=after_commit_before_ack: the packaged daemon mails the fault, keeps
    running and logs that it ignored the variable; the repository's daemon, given the same
    variable and config, SIGKILLs itself at that point."""
    config = daemon_config()
    packaged = Daemon(
        config,
        tmp_path / "packaged",
        env={FAILPOINTS: "after_commit_before_ack"},
        python=str(packaged_python),
    )
    try:
        packaged.start()
        publish_many(mosquitto, [fault("pump-1", 1)])
        relay.wait_for(1, timeout=20)
        assert packaged.running, packaged.log_tail()
        ignored = [r for r in packaged.log_records() if r.get("event") == "failpoints_ignored"]
        assert ignored and ignored[0]["failpoints"] == ["after_commit_before_ack"]
        eventually(
            lambda: [a for a in packaged.alerts() if a["state"] == "sent"], what="a sent alert"
        )
        packaged.terminate()
    finally:
        packaged.close()
    repository = daemon(config, env={FAILPOINTS: "after_commit_before_ack"})
    publish_many(mosquitto, [fault("pump-1", 2)])
    assert repository.wait(20) == -9
