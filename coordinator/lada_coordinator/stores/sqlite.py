"""The default backend: the coordinator's state in one SQLite file, for one coordinator process.

WAL mode lets the HTTP threads read while the round engine writes.

Group commit (the default, ``CoordinatorConfig.group_commit``): requests that arrive while a
commit is being written to disk share the next one. Each request's writes run in a SAVEPOINT of
one open transaction (a failing request rolls back its own savepoint only); the first request to
finish becomes the leader, commits everything released so far with one fsync, and wakes the
others. A request returns only after the commit that holds its writes, so an acknowledged upload
is as durable as with one commit per request; the fsync is what they share. A transaction opened
with ``durable=False`` (the read-only request kinds, whose only write is the replay counter) is
committed without an fsync when nothing durable shares its group: losing that counter in a power
cut lets a replayed *read* through once, which reveals nothing (the reply is sealed to the device).
Reads outside a transaction run on one read-only connection per thread and see committed state
only, so the round engine never acts on writes that could still be rolled back.

Every write transaction runs under one lock in this process, so the row locks other backends take
(:meth:`~lada_coordinator.stores.base.CoordinatorStore.lock_client`) are not needed, and the round
engine always leads: a second process on the same file is not supported.

The database, its WAL and the state directory are private to the coordinator's user (0600/0700,
also when they existed before with wider modes): they hold token hashes, device keys and uploads.
A database written by an earlier version gains the newer columns on open (:meth:`SQLiteStore._migrate`).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lada_coordinator.stores.base import ADDED_COLUMNS, SCHEMA, Connection, CoordinatorStore, log
from lada_coordinator.stores.records import StoreError


def _private(path: Path) -> None:
    """Owner-only mode on a file that may have been created wider before."""
    if path.exists():
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


@dataclass
class _Group:
    """The write transaction open now, shared by every request released into it (group commit)."""

    members: int = 0
    durable: bool = False
    done: bool = False
    error: BaseException | None = None


class SQLiteStore(CoordinatorStore):
    """Thread-safe access to the coordinator database.

    One writer connection behind one lock; with ``group_commit`` (the default) many requests share
    each commit and reads use per-thread read-only connections. ``group_commit=False`` is one
    transaction and one fsync per request, every read on the writer connection: the simpler
    behaviour, kept for comparison (``benchmarks/bench_load.py``) and for debugging.
    """

    backend = "sqlite"

    def __init__(self, path: Path, group_commit: bool = True) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():  # SQLite gives the WAL and shared-memory files the database's mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR))
        for suffix in ("", "-wal", "-shm", "-journal"):
            _private(Path(f"{path}{suffix}"))
        self._path = path
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # one commit per request: SQLite flushes the WAL at each commit; group commit: we do, once per group
        self._conn.execute(f"PRAGMA synchronous={'NORMAL' if group_commit else 'FULL'}")
        self._conn.executescript(SCHEMA)
        self._migrate()
        self._lock = threading.RLock()
        self.group_commit = group_commit
        self._group: _Group | None = None  # the open shared transaction (group commit only)
        self._committing = False  # a leader is committing now
        self._commit_done = threading.Condition()
        self._readers: list[sqlite3.Connection] = []  # one per thread (``self._local.reader``)
        self._readers_lock = threading.Lock()

    def _migrate(self) -> None:
        """Add the columns a database created by an earlier version lacks (no manual step)."""
        for table, column, decl in ADDED_COLUMNS:
            have = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                log.info("database: added %s.%s", table, column)

    def describe(self) -> str:
        return f"sqlite {self._path}"

    def lock_client(self, db: Connection, client_id: str) -> None:
        """Nothing to hold: this process writes one transaction at a time."""

    def _exclusive(self, db: Connection, name: str) -> None:
        """Nothing to wait for: this process writes one transaction at a time."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        if getattr(self._local, "depth", 0):
            with self._savepoint(self._conn):
                yield self._conn
            return
        if not self.group_commit:
            with self._lock:
                self.stats["transactions"] += 1
                self._conn.execute("BEGIN IMMEDIATE")
                self._local.depth = 1
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                finally:
                    self._local.depth = 0
                self._conn.execute("COMMIT")
                self.stats["commits"] += 1
            return
        with self._lock:
            if self._group is None:
                self._conn.execute("BEGIN IMMEDIATE")
                self._group = _Group()
            group = self._group
            self.stats["transactions"] += 1
            self._local.depth = 1
            try:
                with self._savepoint(self._conn):
                    yield self._conn
            except BaseException:
                if group.members == 0:  # nothing else in the open transaction: close it now
                    self._conn.execute("ROLLBACK")
                    self._group = None
                raise
            finally:
                self._local.depth = 0
            group.members += 1
            group.durable = group.durable or durable
        self._await_commit(group)

    def _await_commit(self, group: _Group) -> None:
        """Return once ``group`` is committed: as a follower, by waiting; as the leader (the first
        waiter while no commit runs), by committing every write released so far."""
        with self._commit_done:
            while not group.done and self._committing:
                self._commit_done.wait()
            leader = not group.done
            if leader:
                self._committing = True
        if leader:
            committed = False
            try:
                with self._lock:  # the open group is ours: groups close only here, one leader at a time
                    self._group = None
                    try:
                        self._commit(group.durable)
                        committed = True
                    except (sqlite3.Error, OSError) as exc:  # disk full, I/O error: nobody here is acknowledged
                        group.error = exc
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
            finally:
                if not committed and group.error is None:
                    group.error = StoreError("the commit was interrupted")
                with self._commit_done:
                    group.done = True
                    self._committing = False
                    self._commit_done.notify_all()
        if group.error is not None:
            raise StoreError(f"the database could not commit: {group.error}") from group.error

    def _commit(self, durable: bool) -> None:
        """COMMIT (no fsync: group commit runs at ``synchronous=NORMAL``), then, for a durable group,
        fsync the WAL: the same flush ``synchronous=FULL`` does at each commit, once per group.
        (SQLite refuses to change the synchronous level inside a transaction, so the level stays
        NORMAL and the flush is ours.)"""
        self._conn.execute("COMMIT")
        self.stats["commits"] += 1
        if not durable:
            self.stats["commits_without_fsync"] += 1
            return
        fd = os.open(f"{self._path}-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection: committed state only, never behind the write lock."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
            reader.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._readers.append(reader)
            self._local.reader = reader
        return reader

    def _reads_committed(self) -> bool:
        """Whether a read now goes to this thread's read connection (outside any transaction)."""
        return self.group_commit and not getattr(self._local, "depth", 0)

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        if self._reads_committed():
            return self._reader().execute(sql, args).fetchone()
        with self._lock:  # inside a transaction: see its own writes
            return self._conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        if self._reads_committed():
            return self._reader().execute(sql, args).fetchall()
        with self._lock:
            return self._conn.execute(sql, args).fetchall()
