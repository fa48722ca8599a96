"""One connection to the outbox database: opening it, its PRAGMAs, write transactions, and the
one table that turns sqlite3's errors into ours.

Durability choice: `synchronous=FULL`, so a commit is on disk before we acknowledge the MQTT
message; a power cut then costs nothing that the broker was told we have. (With NORMAL the
last commits before a power cut can vanish after their PUBACK left.) Ingest batches what
arrived meanwhile into one transaction, so FULL costs one fsync per batch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import OutboxCorrupt, OutboxError, OutboxUnavailable
from agent.outbox._schema import SCHEMA_VERSION, check_version, thread_key, upgrade

# SQLite's primary result codes (sqlite3.Error.sqlite_errorname, minus any extended suffix such
# as SQLITE_IOERR_WRITE) → what the caller can do about them. Mapped by type, never by the text.
_UNAVAILABLE_FIX = "free disk space or check the state dir's permissions"
_CORRUPT_FIX = (
    "The outbox database is damaged; stop faultmail, move the file aside "
    "(mv FILE FILE.damaged), then start faultmail again (a fresh outbox is created; "
    "`faultmail doctor` says the same)"
)
_ERROR_TABLE: dict[str, tuple[type[OutboxError], str]] = {
    "SQLITE_FULL": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_IOERR": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_READONLY": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_CANTOPEN": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_PERM": (OutboxUnavailable, _UNAVAILABLE_FIX),
    "SQLITE_BUSY": (OutboxUnavailable, "another process holds the outbox; retrying"),
    "SQLITE_LOCKED": (OutboxUnavailable, "another process holds the outbox; retrying"),
    "SQLITE_NOMEM": (OutboxUnavailable, "the gateway is out of memory"),
    "SQLITE_CORRUPT": (OutboxCorrupt, _CORRUPT_FIX),
    "SQLITE_NOTADB": (OutboxCorrupt, _CORRUPT_FIX),
}


def outbox_error(action: str, exc: sqlite3.Error) -> OutboxError:
    """The faultmail error for one sqlite3 error, chosen by its result code."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    primary = "_".join(name.split("_")[:2])
    kind, fix = _ERROR_TABLE.get(primary, (OutboxError, ""))
    text = f"{action}: {exc}" + (f" [{name}]" if name else "")
    return kind(f"{text} ({fix})" if fix else text)


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn sqlite3 exceptions into ours, once, with what a technician can do about them."""
    try:
        yield
    except sqlite3.Error as exc:
        raise outbox_error(action, exc) from exc


def _give_to_state_dir_owner(path: Path) -> None:
    """Files root creates in the state directory (a `faultmail send-test` or `queue retry` run
    before the daemon's first start) belong to the directory's owner, the service user: a
    root-owned outbox.db would leave the daemon with SQLITE_READONLY."""
    if os.geteuid() != 0:
        return
    owner = path.parent.stat()
    if owner.st_uid == 0:
        return
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        target = path.with_name(name)
        with contextlib.suppress(FileNotFoundError):
            st = target.stat(follow_symlinks=False)
            if st.st_uid == 0 and not stat.S_ISLNK(st.st_mode):
                os.chown(target, owner.st_uid, owner.st_gid, follow_symlinks=False)


# One lock per database file for the write transactions of this process's connections (the
# intake's, the delivery loop's, the ack listener's): they queue here and each goes the moment
# the one before it commits. Left to SQLite, a writer that finds the file locked sleeps in
# steps of up to 100 ms however soon the lock is free: in a storm the delivery loop waited
# 5.6 s in all for its BEGIN (one wait 430 ms) and intake 6.6 s. Other processes (the CLI)
# still meet SQLite's busy timeout. Reentrant, and never waited for longer than that timeout
# (then SQLite's own wait follows, as before): a nested write on a second connection of the
# same thread, or a writer that waits for another, fails as it always did instead of hanging.
_BUSY_TIMEOUT_S = 5.0
_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.RLock:
    key = os.path.realpath(path)
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(key, threading.RLock())


class Database:
    """One connection to the outbox file, at the current schema. Use one per thread.

    The outbox's parts (ingest, plans, queue, operator, reports, housekeeping) are mixins over
    this one connection, so that `Outbox` is a single object for its callers while each part
    stays a unit of its own that can be read and tested alone.
    """

    def __init__(self, path: Path, *, readonly: bool = False, group: str | None = None) -> None:
        self.path = path
        # The [cluster] group this outbox works for; None: single mode. Group mode gives mails
        # Message-IDs from their alerts' identities and mirrors pending alerts as held records.
        self.group = group
        self._readonly = readonly
        # write_group() open: _transaction() is a savepoint of the group's one transaction.
        self._group_open = False
        self._savepoints = 0
        self._writer = _writer_lock(path)
        with translated(f"opening {path}"):
            if readonly:
                if not path.exists():
                    raise OutboxError(f"{path} does not exist yet: has the daemon ever run?")
                self._conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_S
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(
                    path,
                    isolation_level=None,
                    timeout=_BUSY_TIMEOUT_S,
                    check_same_thread=False,
                )
            self._conn.row_factory = sqlite3.Row
            # The SQL that matches alerts to threads calls the Python key: one spelling of it.
            self._conn.create_function("thread_key", 2, thread_key, deterministic=True)
            self._setup()
        if not readonly:
            _give_to_state_dir_owner(path)

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        # 1 MiB of page cache per connection instead of 2: the hot pages are few (pending
        # rows, indexes) and the OS caches the rest; a gateway counts every megabyte.
        conn.execute("PRAGMA cache_size = -1024")
        if self._readonly:
            check_version(self.path, conn.execute("PRAGMA user_version").fetchone()[0])
            return
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise OutboxError(f"{self.path}: could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Only takes effect before the first table exists: lets housekeeping give freed
            # pages back to the file system (the outbox has a size cap).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        check_version(self.path, version)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction() as conn:
                upgrade(conn, target)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._group_open:
            # Inside write_group(): the group's one COMMIT makes this durable; a savepoint lets
            # this write fail alone.
            with self.savepoint():
                yield self._conn
            return
        with self._writing():
            # BEGIN IMMEDIATE takes the write lock up front: no deadlock upgrade from a read.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's turn to write (see _WRITERS), waited for at most _BUSY_TIMEOUT_S."""
        held = self._writer.acquire(timeout=_BUSY_TIMEOUT_S)
        try:
            yield
        finally:
            if held:
                self._writer.release()

    @contextmanager
    def write_group(self, action: str) -> Iterator[None]:
        """One transaction, one fsync, for several writes: each `_transaction()` inside it is a
        savepoint. Raises OutboxError (for `action`) when BEGIN or the COMMIT fails; then
        nothing of the group is stored. A failed COMMIT (a deferred constraint, a disk error)
        can leave the transaction open: it is rolled back so the connection stays usable."""
        if self._group_open:
            raise RuntimeError("write groups do not nest")
        with self._writing():
            with translated(action):
                self._conn.execute("BEGIN IMMEDIATE")
            self._group_open = True
            try:
                try:
                    yield
                except BaseException:
                    self._rollback_quietly()
                    raise
                if not self._conn.in_transaction:
                    raise OutboxError(
                        f"{action}: SQLite rolled the transaction back after an error in it; "
                        "nothing of it is stored"
                    )
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback_quietly()
                    raise outbox_error(action, exc) from exc
            finally:
                self._group_open = False

    def group_intact(self) -> bool:
        """False when SQLite rolled the whole group back by itself (it does on SQLITE_FULL,
        IOERR, NOMEM, BUSY inside a statement): the group's earlier writes are gone too."""
        return self._conn.in_transaction

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the open write group that an exception undoes alone."""
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            # When SQLite already rolled the whole transaction back the savepoint is gone.
            if self._conn.in_transaction:
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    def _rollback_quietly(self) -> None:
        # The error that got us here is the one to report; a failing ROLLBACK adds nothing.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()

    @functools.cached_property
    def instance(self) -> str:
        """A random id of this database file, part of every Message-ID it creates."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        return str(row[0])
