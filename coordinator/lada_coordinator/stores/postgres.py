"""The PostgreSQL backend: one database that several coordinator replicas share.

Same tables as SQLite (``base.SCHEMA``, translated: REAL is double precision, INTEGER bigint, BLOB
bytea, TEXT compares byte by byte as SQLite's does) and the same SQL, with PostgreSQL doing what one
process's lock does in SQLite:

* Each request's writes are one transaction on a pooled connection, committed with
  ``synchronous_commit=on`` before the reply leaves (``durable=False``, the read-only kinds: off,
  so they do not wait for the WAL flush). Nested transactions are savepoints, as in SQLite.
* A sealed request holds its device's row (``SELECT … FOR UPDATE``, :meth:`PostgresStore.lock_client`)
  for its whole transaction, so one device's requests run one after the other whichever replica
  they reach; :meth:`~lada_coordinator.stores.base.CoordinatorStore.accept` is a conditional update
  on top, so a sequence number is accepted once. Enrollments run one at a time
  (``pg_advisory_xact_lock``).
* Reads outside a transaction are single autocommit statements: committed state only.
* Exactly one replica runs the round engine (:class:`PostgresLease`): the one whose dedicated
  session holds a session-level advisory lock. When that replica dies its session ends, the lock
  frees and another replica's engine takes over from the stored phase, as a restarted coordinator
  does. Each new leader raises an epoch in the ``leadership`` table; every transaction of an engine
  reads it ``FOR SHARE`` and is refused (:class:`LeadershipLost`) once it changed, so an engine
  that lost its lock without noticing (a network partition) cannot write after its successor began.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from lada_coordinator.stores.base import ADDED_COLUMNS, SCHEMA, Connection, CoordinatorStore, Cursor
from lada_coordinator.stores.records import LeadershipLost, StoreError

log = logging.getLogger(__name__)

#: which replica leads, since when, and the fencing epoch each new leader raises
LEADERSHIP_TABLE: Final = """
CREATE TABLE IF NOT EXISTS leadership (
    id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, holder TEXT NOT NULL, since REAL NOT NULL);
"""
_TYPES: Final = {"TEXT": 'TEXT COLLATE "C"', "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT", "BLOB": "BYTEA"}
#: connection settings unless the URL gives its own: a dead server or replica is noticed in ~25 s
_CONNECT_DEFAULTS: Final = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
#: the same from the server's side, on the leadership session: a replica's host that vanishes
#: without closing its connection frees the lock within ~25 s (ignored over a Unix socket)
_SERVER_KEEPALIVES: Final = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
)


def pg_types(sql: str) -> str:
    """SQLite's column types in PostgreSQL's."""
    return re.sub(r"\b(TEXT|REAL|INTEGER|BLOB)\b", lambda m: _TYPES[m.group(1)], sql)


def lock_key(name: str) -> int:
    """The advisory-lock key of ``name`` (advisory locks are per database)."""
    return zlib.crc32(f"lada-coordinator:{name}".encode())


#: the round engine's leadership (held by a session for as long as it lives)
ENGINE_LOCK: Final = lock_key("round-engine")


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def _execute(conn: psycopg.Connection, sql: str, args: Sequence[Any]) -> Cursor:
    return conn.execute(_placeholders(sql), tuple(args)) if args else conn.execute(sql)


class _Handle:
    """A transaction's connection as the shared SQL expects it (:class:`Connection`)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return _execute(self.raw, sql, parameters)


class _Pool:
    """At most ``size`` connections, each used by one thread at a time; broken ones are dropped."""

    def __init__(self, connect: Callable[[], psycopg.Connection], size: int, wait_s: float = 30.0) -> None:
        self._connect = connect
        self._size = size
        self._wait_s = wait_s
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=self._wait_s):
            raise StoreError(f"no database connection came free within {self._wait_s:.0f}s ({self._size} in use)")
        conn: psycopg.Connection | None = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                reusable = (
                    not (conn.closed or conn.broken) and conn.info.transaction_status == pq.TransactionStatus.IDLE
                )
                with self._lock:
                    if reusable and not self._closed:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresStore(CoordinatorStore):
    """The coordinator's state in the PostgreSQL database at ``url`` (``postgresql://…``; a password
    is better kept in ``~/.pgpass`` or ``PGPASSWORD`` than in the URL). The tables are made on
    first open. Each process holds up to ``pool_size`` connections, plus one per :class:`PostgresLease`."""

    backend = "postgresql"

    def __init__(self, url: str, pool_size: int = 10) -> None:
        super().__init__()
        self._url = url
        given = conninfo_to_dict(url)
        self._connect_args: dict[str, Any] = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        self._pool = _Pool(lambda: self.connect("requests"), pool_size)
        self._stats_lock = threading.Lock()
        with self.transaction() as db:  # replicas starting together make the tables one at a time
            self._exclusive(db, "schema")
            for statement in pg_types(SCHEMA + LEADERSHIP_TABLE).split(";"):
                if statement.strip():
                    db.execute(statement)
            have = set(
                db.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema()"
                ).fetchall()
            )
            for table, column, decl in ADDED_COLUMNS:
                if (table, column) not in have:  # a database made by an earlier version
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {pg_types(decl)}")
                    log.info("database: added %s.%s", table, column)
        self.stats = dict.fromkeys(self.stats, 0)  # the requests' transactions only, as in SQLite

    def connect(self, purpose: str) -> psycopg.Connection:
        """A new autocommit session whose commits wait for the WAL flush (``synchronous_commit``
        on, whatever the server's default): an acknowledged write is on disk."""
        conn = psycopg.connect(
            self._url, autocommit=True, application_name=f"lada-coordinator {purpose}", **self._connect_args
        )
        conn.execute("SET synchronous_commit = on")
        return conn

    def describe(self) -> str:
        info = conninfo_to_dict(self._url)
        where = f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
        return f"postgresql {info['user']}@{where}" if info.get("user") else f"postgresql {where}"

    def close(self) -> None:
        self._pool.close()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Connection]:
        handle: _Handle | None = getattr(self._local, "conn", None)
        if handle is not None:  # inside this thread's transaction: a savepoint of it
            with self._savepoint(handle):
                yield handle
            return
        with self._pool.connection() as conn:
            self._count("transactions")
            conn.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off")
            handle = _Handle(conn)
            self._local.conn, self._local.depth = handle, 1
            try:
                self._check_fence(handle)
                yield handle
            except BaseException:
                if not (conn.closed or conn.broken):
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        conn.close()  # the pool drops it
                raise
            finally:
                self._local.conn, self._local.depth = None, 0
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:  # nobody in this transaction is acknowledged
                raise StoreError(f"the database could not commit: {exc}") from exc
            self._count("commits")
            if not durable:
                self._count("commits_without_fsync")

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        handle: _Handle | None = getattr(self._local, "conn", None)
        if handle is not None:
            return handle.execute(sql, args).fetchone()
        with self._pool.connection() as conn:
            return _execute(conn, sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        handle: _Handle | None = getattr(self._local, "conn", None)
        if handle is not None:
            return handle.execute(sql, args).fetchall()
        with self._pool.connection() as conn:
            return _execute(conn, sql, args).fetchall()

    def lock_client(self, db: Connection, client_id: str) -> None:
        db.execute("SELECT 1 FROM clients WHERE client_id = ? FOR UPDATE", (client_id,))

    def _exclusive(self, db: Connection, name: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?::bigint)", (lock_key(name),))

    # ---------------------------------------------------------------------------- leadership
    def leadership(self, replica: str) -> PostgresLease:
        return PostgresLease(self, replica)

    def _fence(self, epoch: int | None) -> None:
        """This thread's transactions from now on belong to the engine of leadership ``epoch``."""
        self._local.fence = epoch

    def _check_fence(self, db: Connection) -> None:
        epoch = getattr(self._local, "fence", None)
        if epoch is None:
            return
        row = db.execute("SELECT epoch, holder FROM leadership WHERE id = 1 FOR SHARE").fetchone()
        if row is None or row[0] != epoch:
            raise LeadershipLost(
                f"leadership epoch {epoch} is over: {row[1] if row else 'nobody'} leads now (epoch {row and row[0]})"
            )


class PostgresLease:
    """Leadership of the round engine among the replicas that share one database.

    A background thread tries ``pg_try_advisory_lock`` on a session of its own every ``retry_s``
    seconds; the replica whose session holds the lock leads until that session ends (the process
    dies, :meth:`close`, or the connection breaks), and then another one's try succeeds. While it
    leads, the thread checks every ``retry_s`` that the session is alive, and stops leading when it
    is not. On taking the lock it raises the ``leadership`` epoch, which fences out the engine of any
    earlier leader (:meth:`PostgresStore._check_fence`).
    """

    def __init__(self, store: PostgresStore, replica: str, retry_s: float = 3.0) -> None:
        self.replica = replica
        self.retry_s = retry_s
        self._store = store
        self._conn: psycopg.Connection | None = None
        self._epoch: int | None = None
        self._held = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lada-leadership", daemon=True)

    @property
    def leading(self) -> bool:
        return self._held.is_set()

    def start(self) -> None:
        self._thread.start()

    def wait(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            if self._held.wait(0.5):
                self._store._fence(self._epoch)
                return True
        return False

    def describe(self) -> dict[str, Any]:
        row = self._store._one("SELECT holder, since FROM leadership WHERE id = 1")
        return {
            "replica": self.replica,
            "leader": self.leading,
            "leader_replica": row[0] if row else None,
            "leader_since": row[1] if row else None,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.retry_s + 10)
        self._drop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._contend()
            except psycopg.Error as exc:
                if self._held.is_set():
                    log.warning("replica %s lost its leadership session (%s): it no longer leads", self.replica, exc)
                else:
                    log.warning("replica %s cannot contend for leadership (%s); retrying", self.replica, exc)
                self._drop()
            self._stop.wait(self.retry_s)

    def _contend(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            conn = self._conn = self._store.connect("leadership")
            conn.execute(_SERVER_KEEPALIVES)
        if self._held.is_set():
            conn.execute("SELECT 1")  # the lock lives as long as this session: is it alive?
            return
        (got,) = conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", (ENGINE_LOCK,)).fetchone() or (False,)
        if not got:
            return
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO leadership (id, epoch, holder, since) VALUES (1, 1, %s, %s) ON CONFLICT (id)"
                " DO UPDATE SET epoch = leadership.epoch + 1, holder = excluded.holder, since = excluded.since"
                " RETURNING epoch",
                (self.replica, time.time()),
            ).fetchone()
        assert row is not None
        self._epoch = row[0]
        self._held.set()
        log.info("replica %s leads: its round engine runs (epoch %d)", self.replica, self._epoch)

    def _drop(self) -> None:
        """Stop leading and end the session (which frees the lock if it still held it)."""
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
