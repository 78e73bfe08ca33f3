"""Durable coordinator state in SQLite.

Every accepted upload is committed before the reply leaves, in the same transaction that advances
the client's sequence number, so a crash never loses an acknowledged message and a rejected
request changes nothing. WAL mode lets the HTTP threads read while the round engine writes.
Chunks of large uploads (``upload_sessions``, ``upload_chunks``) are kept the same way, so a
restarted coordinator still holds every chunk it acknowledged (``server/uploads.py``).

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

The database, its WAL and the state directory are private to the coordinator's user (0600/0700,
also when they existed before with wider modes): they hold token hashes, device keys and uploads.
A database written by an earlier version gains the newer columns on open (:meth:`Store._migrate`).

An accepted ``features.put`` is stored twice over: its JSON payload, as it arrived, and its feature
matrix as the round engine uses it (little-endian float32 with its shape, :meth:`Store.put_upload`),
so that allocating a round reads every client's matrix with one query
(:meth:`Store.feature_matrices`) instead of parsing thousands of JSON payloads again.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, overload

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter

from lada_client.common.secagg import EncryptedShare, Roster, SecAggFailure, SecAggResult, UnmaskRequest
from lada_client.common.wire import (
    KIND_PAYLOADS,
    Capabilities,
    FeatureUpload,
    LoraFactor,
    Phase,
    RewardReport,
    RoundInfo,
    SecAggUpload,
)

#: the stored kinds of secure-aggregation messages (``secagg.put`` by step)
SecAggKind = Literal["secagg.shares", "secagg.masked", "secagg.unmask"]

log = logging.getLogger(__name__)

#: The secure-aggregation group of devices whose token names none.
DEFAULT_GROUP = "default"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, created_at REAL NOT NULL, used_by TEXT, used_at REAL,
    expires_at REAL, revoked_at REAL, secagg_group TEXT NOT NULL DEFAULT 'default');
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, sign_key TEXT NOT NULL,
    kex_key TEXT NOT NULL, domain TEXT NOT NULL, model_name TEXT NOT NULL,
    capabilities TEXT NOT NULL, enrolled_at REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0,
    secagg_group TEXT NOT NULL DEFAULT 'default', revoked_at REAL, last_seen_at REAL);
CREATE TABLE IF NOT EXISTS quarantine (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, stage TEXT NOT NULL, error TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (round, client_id));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, phase TEXT NOT NULL, info TEXT NOT NULL, gold TEXT NOT NULL,
    opened_at REAL NOT NULL, closed_at REAL, metrics TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS uploads (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
    received_at REAL NOT NULL, matrix BLOB, matrix_rows INTEGER, matrix_cols INTEGER,
    PRIMARY KEY (round, client_id, kind));
CREATE TABLE IF NOT EXISTS allocations (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, direction TEXT NOT NULL,
    sample_ids TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (round, client_id, direction));
CREATE TABLE IF NOT EXISTS server_updates (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, factors TEXT NOT NULL,
    PRIMARY KEY (round, client_id));
CREATE TABLE IF NOT EXISTS filters (
    client_id TEXT NOT NULL, direction TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (client_id, direction));
CREATE TABLE IF NOT EXISTS secagg (
    round INTEGER NOT NULL, group_id TEXT NOT NULL, item TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (round, group_id, item));
CREATE TABLE IF NOT EXISTS filter_updates (
    round INTEGER NOT NULL, client_id TEXT NOT NULL, direction TEXT NOT NULL,
    PRIMARY KEY (round, client_id, direction));
CREATE TABLE IF NOT EXISTS upload_sessions (
    session_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, target TEXT NOT NULL,
    target_seq INTEGER NOT NULL, total_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
    chunk_bytes INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    committed_at REAL, UNIQUE (client_id, target_seq));
CREATE TABLE IF NOT EXISTS upload_chunks (
    session_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (session_id, idx));
"""
# columns added after the first release: (table, column, declaration) for databases created before
_ADDED_COLUMNS = (
    ("tokens", "expires_at", "REAL"),
    ("tokens", "revoked_at", "REAL"),
    ("tokens", "secagg_group", "TEXT NOT NULL DEFAULT 'default'"),
    ("clients", "secagg_group", "TEXT NOT NULL DEFAULT 'default'"),
    ("clients", "revoked_at", "REAL"),
    ("clients", "last_seen_at", "REAL"),
    ("uploads", "matrix", "BLOB"),
    ("uploads", "matrix_rows", "INTEGER"),
    ("uploads", "matrix_cols", "INTEGER"),
)
#: how a feature matrix is stored (``uploads.matrix``): float32, little-endian, row-major
MATRIX_DTYPE: Final = np.dtype("<f4")
_CLIENT_COLUMNS = (
    "client_id, name, sign_key, kex_key, domain, model_name, capabilities, last_seq, bytes_in, bytes_out,"
    " secagg_group, revoked_at, enrolled_at, last_seen_at"
)


#: What the store reads for a device whose capability record is missing, unreadable or silent on
#: training: it is never sent work it did not declare it can do (fail closed).
UNDECLARED = Capabilities(can_score=False, can_train=False)


def _capabilities(stored: str) -> Capabilities:
    """A device's declared capabilities as stored; :data:`UNDECLARED` unless they parse and say
    whether it can train (the model's ``can_train=True`` default is for a device's own declaration)."""
    try:
        declared = json.loads(stored)
        capabilities = Capabilities.model_validate(declared)
    except ValueError:  # bad JSON, or not a capability record (pydantic's ValidationError included)
        return UNDECLARED
    return capabilities if "can_train" in declared else UNDECLARED


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    sign_key: str
    kex_key: str
    domain: str
    model_name: str
    capabilities: Capabilities
    last_seq: int
    bytes_in: int
    bytes_out: int
    secagg_group: str = DEFAULT_GROUP  # set by the operator through the enrollment token
    revoked: bool = False
    # what the operator sees (``lada-coordinator clients``); nothing in a round depends on them
    enrolled_at: float | None = field(default=None, compare=False)
    last_seen_at: float | None = field(default=None, compare=False)  # last accepted sealed request


@dataclass(frozen=True)
class TokenRecord:
    token_id: str  # the first 12 hex digits of the secret's hash: names the token, reveals nothing
    created_at: float
    expires_at: float | None
    used_by: str | None
    revoked: bool
    secagg_group: str


class PathProvenance(BaseModel):
    """The coordinator's own record of a round's teacher paths (never sent): where each
    candidate's path came from (``llm``, ``gold``, ``store``) and how many of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path_sources: dict[str, str] = {}
    path_stats: dict[str, int] = {}


@dataclass(frozen=True)
class RoundMetrics:
    """One round as the operator sees it: when it opened and closed (``closed_at`` None while it
    runs) and what the engine recorded when it closed (``metrics``: empty before)."""

    round: int
    phase: Phase
    opened_at: float
    closed_at: float | None
    metrics: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The flat form of ``/v1/status``'s ``rounds``: the metrics beside the round's times."""
        return {
            "round": self.round,
            "phase": self.phase,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            **self.metrics,
        }


@dataclass(frozen=True)
class QuarantineEntry:
    """A device set aside for the rest of a round: at which stage, why and when."""

    round: int
    client_id: str
    stage: str
    error: str
    at: float


class RoutedShares(BaseModel):
    """A group's routed shares (secure aggregation): who shared keys, and the encrypted shares
    routed to each recipient (what its ``secagg.get`` ``inbox`` poll returns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sharers: tuple[str, ...]
    inbox: dict[str, tuple[EncryptedShare, ...]]


#: what the coordinator stores per round and group in the ``secagg`` table, by item
SecAggItem = Literal["roster", "routed", "unmask_request", "result"]
SecAggRecord = Roster | RoutedShares | UnmaskRequest | SecAggResult | SecAggFailure
# the model of each item but the roster, which :func:`_roster` reads
_SECAGG_ITEMS: Final[dict[str, TypeAdapter[Any]]] = {
    "routed": TypeAdapter(RoutedShares),
    "unmask_request": TypeAdapter(UnmaskRequest),
    "result": TypeAdapter(SecAggResult | SecAggFailure),
}
_SERVER_UPDATE: Final = TypeAdapter(list[LoraFactor])


@functools.lru_cache(maxsize=64)
def _roster(stored: str) -> Roster:
    """A stored roster, parsed once: every secure-aggregation request reads its group's roster,
    and checking one (each member's keys, the neighbour graph) costs milliseconds."""
    return Roster.model_validate_json(stored)


class EnrollmentRefused(Exception):
    """An enrollment the store refuses: ``reason`` is ``bad_token`` or ``duplicate_client``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


class StoreError(RuntimeError):
    """The database could not commit: every request in the failed commit gets this."""


class Store:
    """Thread-safe access to the coordinator database.

    One writer connection behind one lock; with ``group_commit`` (the default) many requests share
    each commit and reads use per-thread read-only connections. ``group_commit=False`` is one
    transaction and one fsync per request, every read on the writer connection: the simpler
    behaviour, kept for comparison (``benchmarks/bench_load.py``) and for debugging.
    """

    def __init__(self, path: Path, group_commit: bool = True) -> None:
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
        self._local = threading.local()  # per thread: transaction depth, read connection
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        #: transactions run and commits written (each commit one fsync when durable): their ratio
        #: is how many requests shared a commit
        self.stats = {"transactions": 0, "commits": 0, "commits_without_fsync": 0}

    def _migrate(self) -> None:
        """Add the columns a database created by an earlier version lacks (no manual step)."""
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                log.info("database: added %s.%s", table, column)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the block's writes atomically; on return they are committed (and, when ``durable``,
        on disk). A transaction opened inside another one of the same thread is a savepoint of it."""
        if getattr(self._local, "depth", 0):
            with self._savepoint():
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
                with self._savepoint():
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

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        depth = self._local.depth
        name = f"sp{depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._local.depth = depth
        self._conn.execute(f"RELEASE {name}")

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

    # ---------------------------------------------------------------------------- enrollment
    def add_token(self, secret_hash: str, expires_at: float | None, secagg_group: str = DEFAULT_GROUP) -> None:
        """Record a one-time enrollment token by the hash of its secret (``common/enrollment.py``)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO tokens (token_hash, created_at, expires_at, secagg_group) VALUES (?, ?, ?, ?)",
                (secret_hash, time.time(), expires_at, secagg_group),
            )

    def tokens(self) -> list[TokenRecord]:
        rows = self._all(
            "SELECT token_hash, created_at, expires_at, used_by, revoked_at, secagg_group"
            " FROM tokens ORDER BY created_at"
        )
        return [TokenRecord(h[:12], c, e, u, r is not None, g) for h, c, e, u, r, g in rows]

    def revoke_token(self, token_id: str) -> int:
        """Revoke the unused tokens whose id (hash prefix, at least 8 hex digits) is ``token_id``."""
        if len(token_id) < 8 or not all(ch in "0123456789abcdef" for ch in token_id):
            raise ValueError("a token id is at least 8 hex digits (see `lada-coordinator tokens`)")
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ?"
                " WHERE substr(token_hash, 1, ?) = ? AND used_by IS NULL AND revoked_at IS NULL",
                (time.time(), len(token_id), token_id),
            )
            return cur.rowcount

    def enroll(self, secret_hash: str, record: ClientRecord, now: float | None = None) -> ClientRecord:
        """Consume the token and add the client, atomically; returns the record as stored (with the
        token's group). Raises :class:`EnrollmentRefused` and changes nothing when refused."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute(
                "SELECT used_by, expires_at, revoked_at, secagg_group FROM tokens WHERE token_hash = ?", (secret_hash,)
            ).fetchone()
            if row is None:
                raise EnrollmentRefused("bad_token", "unknown enrollment token")
            used_by, expires_at, revoked_at, group = row
            if used_by is not None:
                raise EnrollmentRefused("bad_token", "enrollment token was already used")
            if revoked_at is not None:
                raise EnrollmentRefused("bad_token", "enrollment token was revoked")
            if expires_at is None or expires_at <= now:
                raise EnrollmentRefused("bad_token", "enrollment token has expired; ask the operator for a new one")
            if db.execute("SELECT 1 FROM clients WHERE name = ?", (record.name,)).fetchone():
                raise EnrollmentRefused("duplicate_client", f"a client named {record.name!r} is already enrolled")
            if db.execute(
                "SELECT 1 FROM clients WHERE sign_key = ? OR kex_key = ?", (record.sign_key, record.kex_key)
            ).fetchone():
                raise EnrollmentRefused("duplicate_client", "these keys are already enrolled under another name")
            stored = replace(record, secagg_group=group, enrolled_at=now, last_seen_at=now)
            self._insert_client(db, stored, now)
            db.execute(
                "UPDATE tokens SET used_by = ?, used_at = ? WHERE token_hash = ?", (record.client_id, now, secret_hash)
            )
        return stored

    def add_client(self, record: ClientRecord) -> None:
        """Insert a client without a token (tests and benchmarks that start from an enrolled fleet)."""
        with self.transaction() as db:
            self._insert_client(db, record, time.time())

    @staticmethod
    def _insert_client(db: sqlite3.Connection, r: ClientRecord, now: float) -> None:
        db.execute(
            "INSERT INTO clients (client_id, name, sign_key, kex_key, domain, model_name, capabilities, enrolled_at,"
            " secagg_group, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.client_id,
                r.name,
                r.sign_key,
                r.kex_key,
                r.domain,
                r.model_name,
                r.capabilities.model_dump_json(),
                now,
                r.secagg_group,
                r.last_seen_at,
            ),
        )

    def client(self, client_id: str) -> ClientRecord | None:
        row = self._one(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,))
        return None if row is None else self._client(row)

    @staticmethod
    def _client(row: tuple) -> ClientRecord:
        (client_id, name, sign_key, kex_key, domain, model_name, capabilities) = row[:7]
        (last_seq, bytes_in, bytes_out, secagg_group, revoked_at, enrolled_at, last_seen_at) = row[7:]
        return ClientRecord(
            client_id,
            name,
            sign_key,
            kex_key,
            domain,
            model_name,
            _capabilities(capabilities),
            last_seq,
            bytes_in,
            bytes_out,
            secagg_group,
            revoked=revoked_at is not None,
            enrolled_at=enrolled_at,
            last_seen_at=last_seen_at,
        )

    def clients(self) -> list[ClientRecord]:
        """Enrolled clients that are not revoked, in enrollment order."""
        rows = self._all(
            f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE revoked_at IS NULL ORDER BY enrolled_at, client_id"
        )
        return [self._client(r) for r in rows]

    def devices(self) -> list[ClientRecord]:
        """Every enrolled client, revoked ones included (``revoked``), in enrollment order: the
        operator's list, where a revoked device must stay visible."""
        return [
            self._client(r) for r in self._all(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY enrolled_at, client_id")
        ]

    def revoke_client(self, name_or_id: str) -> bool:
        """Revoke a device: from now on its requests are unauthenticated and rounds stop expecting it."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE clients SET revoked_at = ? WHERE (name = ? OR client_id = ?) AND revoked_at IS NULL",
                (time.time(), name_or_id, name_or_id),
            )
            return cur.rowcount == 1

    def accept(self, db: sqlite3.Connection, client_id: str, seq: int, bytes_in: int, bytes_out: int) -> bool:
        """Advance the sequence number inside the caller's transaction; False on replay. The device
        was seen now (``last_seen_at``), in the same update."""
        cur = db.execute(
            "UPDATE clients SET last_seq = ?, bytes_in = bytes_in + ?, bytes_out = bytes_out + ?, last_seen_at = ?"
            " WHERE client_id = ? AND last_seq < ?",
            (seq, bytes_in, bytes_out, time.time(), client_id, seq),
        )
        return cur.rowcount == 1

    # -------------------------------------------------------------------------------- rounds
    def current_round(self) -> tuple[int, Phase] | None:
        row = self._one("SELECT round, phase FROM rounds ORDER BY round DESC LIMIT 1")
        return (row[0], Phase(row[1])) if row else None

    def open_round(
        self,
        round_index: int,
        info: RoundInfo,
        paths: PathProvenance | None = None,
        opened_at: float | None = None,
    ) -> None:
        """Record an opened round (phase ``features``); ``opened_at`` is when opening it began."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds (round, phase, info, gold, opened_at) VALUES (?, 'features', ?, ?, ?)",
                (
                    round_index,
                    info.model_dump_json(),
                    (paths or PathProvenance()).model_dump_json(),
                    time.time() if opened_at is None else opened_at,
                ),
            )

    def round_info(self, round_index: int) -> tuple[RoundInfo, PathProvenance]:
        """The round as it opened (every group's secure-aggregation parameters) and where its
        teacher paths came from; ``KeyError`` for a round never opened."""
        row = self._one("SELECT info, gold FROM rounds WHERE round = ?", (round_index,))
        if row is None:
            raise KeyError(round_index)
        return RoundInfo.model_validate_json(row[0]), PathProvenance.model_validate_json(row[1])

    def set_phase(self, round_index: int, phase: Phase, metrics: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE rounds SET phase = ? WHERE round = ?", (Phase(phase).value, round_index))
            if metrics is not None:
                db.execute(
                    "UPDATE rounds SET metrics = ?, closed_at = ? WHERE round = ?",
                    (json.dumps(metrics), time.time(), round_index),
                )

    def round_metrics(self) -> list[RoundMetrics]:
        """Every round in order, with its phase, times and metrics: the operator's per-round view."""
        return [
            RoundMetrics(r, Phase(p), o, c, json.loads(m))
            for r, p, o, c, m in self._all(
                "SELECT round, phase, opened_at, closed_at, metrics FROM rounds ORDER BY round"
            )
        ]

    # ------------------------------------------------------------------------------- uploads
    def put_upload(
        self,
        db: sqlite3.Connection,
        round_index: int,
        client_id: str,
        kind: str,
        payload: str,
        matrix: np.ndarray | None = None,
    ) -> bool:
        """Store an upload once; a repeat of the same (round, client, kind) is ignored (idempotent).
        ``matrix``: a checked feature upload's features as the engine uses them
        (``validation.feature_matrix``), stored beside the payload as float32 with its shape."""
        blob, rows, cols = None, None, None
        if matrix is not None:
            if matrix.ndim != 2:
                raise ValueError(f"a feature matrix has two dimensions, not {matrix.ndim}")
            blob, (rows, cols) = np.ascontiguousarray(matrix, dtype=MATRIX_DTYPE).tobytes(), matrix.shape
        cur = db.execute(
            "INSERT OR IGNORE INTO uploads (round, client_id, kind, payload, received_at, matrix, matrix_rows,"
            " matrix_cols) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (round_index, client_id, kind, payload, time.time(), blob, rows, cols),
        )
        return cur.rowcount == 1

    @overload
    def uploads(self, round_index: int, kind: Literal["features.put"]) -> dict[str, FeatureUpload]: ...
    @overload
    def uploads(self, round_index: int, kind: Literal["reward.put"]) -> dict[str, RewardReport]: ...
    @overload
    def uploads(self, round_index: int, kind: SecAggKind) -> dict[str, SecAggUpload]: ...
    def uploads(self, round_index: int, kind: str) -> Mapping[str, BaseModel]:
        """Stored uploads of one kind by client, as the wire models they arrived as. A row that no
        longer parses is left out (and logged), so one damaged row never hides the others; the
        round engine reads :meth:`raw_uploads` instead and sets such a client aside itself."""
        model = KIND_PAYLOADS["secagg.put" if kind.startswith("secagg.") else kind]
        out: dict[str, BaseModel] = {}
        for cid, payload in self.raw_uploads(round_index, kind).items():
            try:
                out[cid] = model.model_validate_json(payload)
            except ValueError as exc:
                log.warning(
                    "round %d: stored %s upload of %s does not parse (%s); ignored", round_index, kind, cid, exc
                )
        return out

    def raw_uploads(self, round_index: int, kind: str) -> dict[str, str]:
        return dict(
            self._all("SELECT client_id, payload FROM uploads WHERE round = ? AND kind = ?", (round_index, kind))
        )

    def raw_upload(self, round_index: int, client_id: str, kind: str) -> str | None:
        """One client's stored payload of ``kind``, as it arrived (None if it sent none)."""
        row = self._one(
            "SELECT payload FROM uploads WHERE round = ? AND client_id = ? AND kind = ?", (round_index, client_id, kind)
        )
        return None if row is None else row[0]

    def feature_matrices(self, round_index: int) -> dict[str, np.ndarray | None]:
        """Every ``features.put`` of the round by client, in one query, as the feature matrix stored
        with it (float32 ``[rows, cols]``, read-only, no copy of the row's bytes); None for a row
        stored without one (by an earlier version) or whose matrix does not decode (logged): the
        caller reads such a row's payload instead. Nothing is checked against the round here."""
        out: dict[str, np.ndarray | None] = {}
        for client_id, blob, rows, cols in self._all(
            "SELECT client_id, matrix, matrix_rows, matrix_cols FROM uploads WHERE round = ? AND kind = ?",
            (round_index, "features.put"),
        ):
            out[client_id] = None
            if blob is None:
                continue
            try:
                out[client_id] = (
                    np.frombuffer(blob, dtype=MATRIX_DTYPE).reshape(rows, cols).astype(np.float32, copy=False)
                )
            except (TypeError, ValueError) as exc:  # a damaged or hand-edited row
                log.warning(
                    "round %d: stored feature matrix of %s does not decode (%s); its payload is read instead",
                    round_index,
                    client_id,
                    exc,
                )
        return out

    def uploaders(self, round_index: int, kind: str) -> set[str]:
        """Who uploaded ``kind`` this round (no payloads read: the engine polls this)."""
        return {
            r[0] for r in self._all("SELECT client_id FROM uploads WHERE round = ? AND kind = ?", (round_index, kind))
        }

    # ---------------------------------------------------------------------------- quarantine
    def quarantine(self, round_index: int, client_id: str, stage: str, error: str) -> bool:
        """Set a client aside for the rest of a round (its data failed a check or broke a step);
        the first reason recorded stays. Returns whether this call recorded it."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?, ?)",
                (round_index, client_id, stage, error[:500], time.time()),
            )
            return cur.rowcount == 1

    def quarantined(self, round_index: int) -> dict[str, str]:
        """client id → "stage: reason" for the clients set aside in this round."""
        rows = self._all("SELECT client_id, stage, error FROM quarantine WHERE round = ?", (round_index,))
        return {cid: f"{stage}: {error}" for cid, stage, error in rows}

    def quarantine_log(self) -> list[QuarantineEntry]:
        """Every device set aside, in the order it happened."""
        rows = self._all("SELECT round, client_id, stage, error, at FROM quarantine ORDER BY at")
        return [QuarantineEntry(*row) for row in rows]

    def put_allocations(
        self,
        round_index: int,
        direction: str,
        allocations: dict[str, tuple[list[str], str]],
        server_updates: Mapping[str, list[LoraFactor]] | None = None,
    ) -> None:
        """Store a round's allocations and, in the same transaction, the adapters trained for
        score-only devices, so a device never sees one without the other."""
        with self.transaction() as db:
            for client_id, (ids, reason) in allocations.items():
                db.execute(
                    "INSERT OR REPLACE INTO allocations VALUES (?, ?, ?, ?, ?)",
                    (round_index, client_id, direction, json.dumps(ids), reason),
                )
            for client_id, factors in (server_updates or {}).items():
                db.execute(
                    "INSERT OR REPLACE INTO server_updates VALUES (?, ?, ?)",
                    (round_index, client_id, _SERVER_UPDATE.dump_json(factors).decode()),
                )

    def server_update(self, round_index: int, client_id: str) -> list[LoraFactor] | None:
        """The adapter trained here for a score-only device this round, if any."""
        row = self._one(
            "SELECT factors FROM server_updates WHERE round = ? AND client_id = ?", (round_index, client_id)
        )
        return _SERVER_UPDATE.validate_json(row[0]) if row else None

    def allocation(self, round_index: int, client_id: str, direction: str) -> tuple[list[str], str] | None:
        row = self._one(
            "SELECT sample_ids, reason FROM allocations WHERE round = ? AND client_id = ? AND direction = ?",
            (round_index, client_id, direction),
        )
        return (json.loads(row[0]), row[1]) if row else None

    # ------------------------------------------------------------------------- secure aggregation
    def put_secagg(self, round_index: int, group_id: str, item: SecAggItem, payload: SecAggRecord) -> None:
        """Coordinator-side protocol output (roster, routed shares, unmask request, result)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO secagg VALUES (?, ?, ?, ?)",
                (round_index, group_id, item, payload.model_dump_json()),
            )

    @overload
    def secagg(self, round_index: int, group_id: str, item: Literal["roster"]) -> Roster | None: ...
    @overload
    def secagg(self, round_index: int, group_id: str, item: Literal["routed"]) -> RoutedShares | None: ...
    @overload
    def secagg(self, round_index: int, group_id: str, item: Literal["unmask_request"]) -> UnmaskRequest | None: ...
    @overload
    def secagg(
        self, round_index: int, group_id: str, item: Literal["result"]
    ) -> SecAggResult | SecAggFailure | None: ...
    def secagg(self, round_index: int, group_id: str, item: SecAggItem) -> SecAggRecord | None:
        """A stored protocol output as its model (a ``result`` is the average or the failure)."""
        row = self._one(
            "SELECT payload FROM secagg WHERE round = ? AND group_id = ? AND item = ?", (round_index, group_id, item)
        )
        if row is None:
            return None
        return _roster(row[0]) if item == "roster" else _SECAGG_ITEMS[item].validate_json(row[0])

    def has_secagg(self, round_index: int, group_id: str, item: SecAggItem) -> bool:
        """Whether a protocol output is stored (the engine's resume check; nothing is parsed)."""
        return (
            self._one(
                "SELECT 1 FROM secagg WHERE round = ? AND group_id = ? AND item = ?", (round_index, group_id, item)
            )
            is not None
        )

    # ------------------------------------------------------------------------------- filters
    def save_filter(self, client_id: str, direction: str, state: bytes, round_index: int) -> None:
        """Persist a refit filter and mark round ``round_index``'s reward as consumed, atomically."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO filters VALUES (?, ?, ?)", (client_id, direction, state))
            db.execute("INSERT OR IGNORE INTO filter_updates VALUES (?, ?, ?)", (round_index, client_id, direction))

    def filter_updated(self, round_index: int, client_id: str, direction: str) -> bool:
        """Whether this round's reward already reached the filter (so a resumed round skips it)."""
        return (
            self._one(
                "SELECT 1 FROM filter_updates WHERE round = ? AND client_id = ? AND direction = ?",
                (round_index, client_id, direction),
            )
            is not None
        )

    def load_filter(self, client_id: str, direction: str) -> bytes | None:
        row = self._one("SELECT state FROM filters WHERE client_id = ? AND direction = ?", (client_id, direction))
        return bytes(row[0]) if row else None
