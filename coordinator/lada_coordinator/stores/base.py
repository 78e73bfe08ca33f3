"""The store interface and everything about it that does not depend on the database.

:class:`CoordinatorStore` is what the HTTP handlers, the round engine and the operator commands use.
Its methods (enrollment, rounds, uploads, quarantine, allocations, secure aggregation, filters) are
written once here, in SQL that SQLite and PostgreSQL both run (``?`` placeholders, ``ON CONFLICT``
upserts); a backend supplies the rest: transactions, reads, row locks and the round engine's
leadership (``sqlite.py``: the default, one process; ``postgres.py``: several replicas).

What every backend guarantees:

* Every accepted upload is committed before the reply leaves, in the same transaction that advances
  the client's sequence number, so a crash never loses an acknowledged message and a rejected
  request changes nothing. ``transaction(durable=False)`` (the read-only request kinds, whose only
  write is the replay counter) may commit without waiting for the disk.
* A transaction opened inside another one of the same thread is a savepoint of it: a failing
  request rolls back its own writes only.
* Reads outside a transaction see committed state only, so the round engine never acts on writes
  that could still be rolled back; reads inside one see its own writes.
* A sequence number is accepted once (:meth:`CoordinatorStore.accept` is one conditional update),
  and :meth:`CoordinatorStore.lock_client` makes one device's requests run one after the other
  even when they reach different replicas.
* Chunks of large uploads (``upload_sessions``, ``upload_chunks``) are kept the same way, so every
  chunk acknowledged is held, by whichever replica (``server/uploads.py``).

An accepted ``features.put`` is stored twice over: its JSON payload, as it arrived, and its feature
matrix as the round engine uses it (little-endian float32 with its shape, :meth:`CoordinatorStore.put_upload`),
so that allocating a round reads every client's matrix with one query
(:meth:`CoordinatorStore.feature_matrices`) instead of parsing thousands of JSON payloads again.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Literal, Protocol, overload

import numpy as np
from pydantic import BaseModel, TypeAdapter

from lada_client.common.secagg import Roster, SecAggFailure, SecAggResult, UnmaskRequest
from lada_client.common.wire import (
    KIND_PAYLOADS,
    FeatureUpload,
    LoraFactor,
    Phase,
    RewardReport,
    RoundInfo,
    SecAggUpload,
)
from lada_coordinator.stores.records import (
    DEFAULT_GROUP,
    ClientRecord,
    EnrollmentRefused,
    PathProvenance,
    QuarantineEntry,
    RoundMetrics,
    RoutedShares,
    SecAggItem,
    SecAggKind,
    SecAggRecord,
    TokenRecord,
    _capabilities,
)

log = logging.getLogger(__name__)

# The tables in SQLite's types; ``postgres.py`` translates them (REAL: double precision, BLOB: bytea).
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
ADDED_COLUMNS = (
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

# the model of each item but the roster, which each store parses through its own cache
_SECAGG_ITEMS: Final[dict[str, TypeAdapter[Any]]] = {
    "routed": TypeAdapter(RoutedShares),
    "unmask_request": TypeAdapter(UnmaskRequest),
    "result": TypeAdapter(SecAggResult | SecAggFailure),
}
_SERVER_UPDATE: Final = TypeAdapter(list[LoraFactor])


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT`` of a whole row that replaces the row with the same ``key`` (both backends)."""
    values = ", ".join("?" for _ in columns)
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}"
    )


_UPSERT_ALLOCATION: Final = upsert(
    "allocations", ("round", "client_id", "direction", "sample_ids", "reason"), ("round", "client_id", "direction")
)
_UPSERT_SERVER_UPDATE: Final = upsert("server_updates", ("round", "client_id", "factors"), ("round", "client_id"))
_UPSERT_SECAGG: Final = upsert("secagg", ("round", "group_id", "item", "payload"), ("round", "group_id", "item"))
_UPSERT_FILTER: Final = upsert("filters", ("client_id", "direction", "state"), ("client_id", "direction"))


class Cursor(Protocol):
    """What a statement returns (``sqlite3.Cursor``, ``psycopg.Cursor``)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """An open transaction, as :meth:`CoordinatorStore.transaction` yields it: statements with ``?``
    placeholders, in SQL both backends run."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Lease(Protocol):
    """Whether this replica's round engine may run (:meth:`CoordinatorStore.leadership`)."""

    replica: str

    @property
    def leading(self) -> bool:
        """This replica leads now."""
        ...

    def start(self) -> None:
        """Begin contending for leadership (in the background)."""

    def wait(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False). From then on the
        calling thread's transactions are its engine's: refused with :class:`LeadershipLost` once
        another replica leads."""
        ...

    def describe(self) -> dict[str, Any]:
        """Who leads, for ``/v1/status``."""
        ...

    def close(self) -> None:
        """Give leadership up (another replica takes over)."""


@dataclass
class SoleLease:
    """One process, one engine: the replica always leads (SQLite)."""

    replica: str
    leading: bool = True

    def start(self) -> None:
        pass

    def wait(self, stop: threading.Event) -> bool:
        return not stop.is_set()

    def describe(self) -> dict[str, Any]:
        return {"replica": self.replica, "leader": True, "leader_replica": self.replica, "leader_since": None}

    def close(self) -> None:
        pass


class CoordinatorStore(ABC):
    """Thread-safe access to the coordinator's database: the interface every backend implements.

    A backend provides :meth:`transaction`, the two read helpers (:meth:`_one`, :meth:`_all`),
    :meth:`close` and :meth:`describe`; where several processes share the database it also
    provides the row locks (:meth:`lock_client`, :meth:`_exclusive`) and :meth:`leadership`.
    """

    #: the backend's name, as ``/v1/status`` and the logs show it
    backend: ClassVar[str]

    def __init__(self) -> None:
        self._local = threading.local()  # per thread: transaction depth (and the backend's own)
        #: transactions run and commits written (each commit one flush to disk when durable): their
        #: ratio is how many requests shared a commit
        self.stats = {"transactions": 0, "commits": 0, "commits_without_fsync": 0}
        # the last round read: its stored text and its parsed models (``round_info``)
        self._round_read: tuple[int, str, str, RoundInfo, PathProvenance] | None = None
        # stored rosters, parsed once per text: every allocation and secure-aggregation request of a
        # group member reads its group's roster, and checking one (each member's keys, the
        # neighbour graph) costs milliseconds; the models are frozen, so requests share them
        self._roster = functools.lru_cache(maxsize=64)(Roster.model_validate_json)

    # ------------------------------------------------------------------------ the backend's part
    @abstractmethod
    def transaction(self, durable: bool = True) -> AbstractContextManager[Connection]:
        """Run the block's writes atomically; on return they are committed (and, when ``durable``,
        on disk). A transaction opened inside another one of the same thread is a savepoint of it."""

    @abstractmethod
    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        """One row: inside this thread's transaction, on it; outside, from committed state."""

    @abstractmethod
    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Every row, read as :meth:`_one` reads."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for a log line (never a password)."""

    def leadership(self, replica: str) -> Lease:
        """Who runs the round engine among the processes that share this database; ``replica``
        names this one. One process per database here: it always leads."""
        return SoleLease(replica)

    @abstractmethod
    def lock_client(self, db: Connection, client_id: str) -> None:
        """Hold the device's row until ``db``'s transaction ends, so that its requests run one after
        the other even on different replicas (its sequence number, its upload sessions)."""

    @abstractmethod
    def _exclusive(self, db: Connection, name: str) -> None:
        """Run the rest of ``db``'s transaction alone among transactions that ask for ``name``."""

    @contextmanager
    def _savepoint(self, conn: Connection) -> Iterator[None]:
        """The block as a savepoint of ``conn``'s open transaction (nested :meth:`transaction`)."""
        depth = self._local.depth
        name = f"sp{depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._local.depth = depth
        conn.execute(f"RELEASE {name}")

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
            self._exclusive(db, "enroll")  # one at a time: a token is used once, a name and keys enroll once
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
    def _insert_client(db: Connection, r: ClientRecord, now: float) -> None:
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

    def accept(self, db: Connection, client_id: str, seq: int, bytes_in: int, bytes_out: int) -> bool:
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
                "INSERT INTO rounds (round, phase, info, gold, opened_at) VALUES (?, 'features', ?, ?, ?)"
                " ON CONFLICT (round) DO UPDATE SET phase = excluded.phase, info = excluded.info, gold = excluded.gold,"
                " opened_at = excluded.opened_at, closed_at = NULL, metrics = '{}'",
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
        # Every request of a round reads the round, and parsing its candidates is most of a small
        # request's CPU (0.35-0.44 ms at 64 candidates): the last round's models are kept and
        # reused while its stored text is unchanged (a re-opened round is parsed afresh). The
        # models are frozen, so sharing them between requests is safe.
        last = self._round_read
        if last is not None and last[0] == round_index and last[1] == row[0] and last[2] == row[1]:
            return last[3], last[4]
        info, gold = RoundInfo.model_validate_json(row[0]), PathProvenance.model_validate_json(row[1])
        self._round_read = (round_index, row[0], row[1], info, gold)
        return info, gold

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
        db: Connection,
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
            "INSERT INTO uploads (round, client_id, kind, payload, received_at, matrix, matrix_rows, matrix_cols)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (round_index, client_id, stage, error[:500].replace("\x00", "\ufffd"), time.time()),
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
                    _UPSERT_ALLOCATION,
                    (round_index, client_id, direction, json.dumps(ids), reason),
                )
            for client_id, factors in (server_updates or {}).items():
                db.execute(
                    _UPSERT_SERVER_UPDATE,
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
                _UPSERT_SECAGG,
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
        return self._roster(row[0]) if item == "roster" else _SECAGG_ITEMS[item].validate_json(row[0])

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
            db.execute(_UPSERT_FILTER, (client_id, direction, state))
            db.execute(
                "INSERT INTO filter_updates VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (round_index, client_id, direction),
            )

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
