"""The checks on this gateway itself: the configuration file (secrets readable by others), the
state directory (exists or can be created, writable), the outbox database (read through
`agent.outbox.inspect`: integrity, schema version, size, mails pending and dead), free disk
space under the state directory, and the metrics textfile's directory (who else can write
there)."""

from __future__ import annotations

import getpass
import os
import shutil
import stat
import tempfile
from pathlib import Path

from agent.doctor.result import Check, fail, ok, size_text, warn
from agent.errors import OutboxError
from agent.outbox.inspect import SCHEMA_VERSION, inspect_file
from agent.settings import Settings

# Free space on the state directory's file system below which doctor warns / fails.
DISK_WARN_BYTES = 100 * 1024 * 1024
DISK_FAIL_BYTES = 10 * 1024 * 1024
# The database this close to outbox.max_bytes is a WARN: at the cap history is pruned.
_NEAR_CAP = 0.9


def config_check(settings: Settings, config: Path | None) -> Check:
    where = str(config) if config is not None else "the configuration"
    problems = settings.permission_problems()
    if problems:
        detail = f"{where} is valid, but " + "; ".join(problem for problem, _ in problems)
        return warn("config", detail, " && ".join(fix for _, fix in problems))
    return ok("config", f"{where} is valid")


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def state_dir_check(settings: Settings) -> Check:
    directory = settings.gateway.state_dir
    user = getpass.getuser()
    if directory.exists() and not directory.is_dir():
        return fail(
            "state dir",
            f"{directory} exists but is not a directory",
            "move it away or set gateway.state_dir to a directory",
        )
    if not directory.exists():
        parent = _existing_ancestor(directory)
        if not parent.is_dir():
            return fail(
                "state dir",
                f"{directory} cannot be created: {parent} is a file",
                "set gateway.state_dir to a directory path (e.g. /var/lib/faultmail)",
            )
        if os.access(parent, os.W_OK | os.X_OK):
            return ok(
                "state dir",
                f"{directory} does not exist yet; the daemon creates it ({parent} is writable "
                f"by {user})",
            )
        return fail(
            "state dir",
            f"{directory} does not exist and {parent} is not writable by {user}",
            f"mkdir -p {directory} && chown {user} {directory} "
            "(or StateDirectory=faultmail in the systemd unit)",
        )
    # os.access says yes to root on a read-only mount: only creating a file tells.
    try:
        fd, name = tempfile.mkstemp(prefix=".doctor-", dir=directory)
    except OSError as exc:
        return fail(
            "state dir",
            f"cannot create a file in {directory} as {user}: {exc.strerror}",
            f"chown {user} {directory} (run doctor as the user the daemon runs as)",
        )
    os.close(fd)
    os.unlink(name)
    return ok("state dir", f"{directory} is writable by {user}")


def database_check(settings: Settings) -> Check:
    path = settings.outbox_path
    name = "database"
    if not path.exists():
        return ok(name, f"{path} does not exist yet; the daemon creates it at its first start")
    if not path.is_file():
        return fail(name, f"{path} is not a file", f"move {path} away; the daemon needs a file")
    if not os.access(path, os.R_OK):
        return fail(
            name,
            f"{path} is not readable by {getpass.getuser()}",
            "run doctor as the user the daemon runs as (sudo -u faultmail faultmail doctor)",
        )
    aside = (
        f"stop faultmail, keep the file for inspection (mv {path} {path}.damaged), then start "
        "faultmail to create a new one (alerts still pending in the old file are not sent); "
        "or restore a backup"
    )
    try:
        report = inspect_file(path)
    except OutboxError as exc:
        return fail(name, f"{path} cannot be read as an SQLite database: {exc}", aside)
    if not report.intact:
        return fail(name, f"{path} is damaged: {'; '.join(report.problems)[:200]}", aside)
    version = report.schema_version
    if version > SCHEMA_VERSION:
        return fail(
            name,
            f"{path} has schema version {version}, newer than this faultmail ({SCHEMA_VERSION})",
            "upgrade faultmail to the version that wrote this database",
        )
    if report.empty:
        return ok(name, f"{path} is empty; the daemon sets it up at its next start")
    size = report.size_bytes
    state = "" if version == SCHEMA_VERSION else f", migrated to {SCHEMA_VERSION} at next start"
    detail = (
        f"{path}: integrity ok, schema {version}{state}, {size_text(size)}, "
        f"{report.pending} mail(s) pending, {report.dead} dead"
    )
    limit = settings.outbox.max_bytes
    if size > _NEAR_CAP * limit:
        return warn(
            name,
            f"{detail}; that is {size / limit:.0%} of outbox.max_bytes",
            "raise outbox.max_bytes or lower outbox.keep_days; at the cap history is pruned "
            "and then ingest pauses",
        )
    return ok(name, detail)


def disk_check(settings: Settings) -> Check:
    where = _existing_ancestor(settings.gateway.state_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return warn("disk", f"cannot measure free space at {where}: {exc}", "check the mount")
    detail = f"{size_text(usage.free)} free of {size_text(usage.total)} at {where}"
    fix = (
        f"free space on the file system of {where}: when it is full faultmail stops "
        "acknowledging alerts (the broker keeps them)"
    )
    if usage.free < DISK_FAIL_BYTES:
        return fail("disk", detail, fix)
    if usage.free < DISK_WARN_BYTES:
        return warn("disk", f"{detail} (less than {size_text(DISK_WARN_BYTES)})", fix)
    return ok("disk", detail)


def textfile_check(settings: Settings) -> Check:
    """WARN when health.metrics_textfile lies in a directory that group or others may write to
    without the sticky bit: anyone with that right can delete or replace the textfile (the
    writer never writes through what they plant, see health.write_atomically, but the figures
    node_exporter serves are theirs to forge)."""
    name = "metrics textfile"
    if not settings.health.metrics_textfile:
        return ok(name, "health.metrics_textfile is not set")
    directory = Path(settings.health.metrics_textfile).parent
    try:
        mode = directory.stat().st_mode
    except OSError as exc:
        return warn(
            name,
            f"cannot read {directory} (health.metrics_textfile): {exc.strerror}",
            f"create {directory} or set health.metrics_textfile to a file in an existing directory",
        )
    shared = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not mode & stat.S_ISVTX:
        who = " and ".join(
            w for bit, w in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everyone")) if mode & bit
        )
        return warn(
            name,
            f"{directory} (health.metrics_textfile) is mode {stat.S_IMODE(mode):04o}: writable "
            f"by {who} without the sticky bit, so they can replace the metrics file",
            f"chmod go-w {directory} (or chmod +t {directory})",
        )
    return ok(name, f"{directory} is mode {stat.S_IMODE(mode):04o}")
