"""Chunked, resumable, idempotent uploads of sealed request bodies larger than ``max_body_bytes``.

A client that must send a sealed envelope too large for one HTTP request (a big masked adapter in
``secagg.put``) seals it as usual, then moves its bytes in pieces, each piece in a request that is
itself sealed, signed and sequence-numbered (so it goes through the same authentication and replay
checks as every other request):

``upload.begin``   declares the target envelope's header, total length, SHA-256 and chunk length;
                   answers the session and the chunks already held (beginning again resumes).
``upload.chunk``   stores one chunk; a repeat of a held chunk with the same bytes is a no-op.
``upload.status``  which chunks are held.
``upload.commit``  reassembles the body, checks its length, SHA-256 and header, and hands the
                   original envelope to its endpoint's own handler (signature, decryption, payload
                   and round checks included) inside the same transaction that marks the session
                   committed. Committing again answers "already stored".
``upload.abort``   drops an uncommitted session and its chunks (the client gave up on it), so they
                   stop counting against its quota before they would expire.

Replay: the target envelope's ``seq`` must be above the client's last accepted one when the session
begins (and below the begin request's own ``seq``, which then advances it), so the body can neither
be sent again directly nor bound to a second session; a session commits once.

Chunks live in the database (``upload_chunks``), committed before the reply leaves, so a coordinator
restart loses no acknowledged chunk, and replicas that share a PostgreSQL database may each receive
some chunks of one upload. Sessions expire ``ttl_s`` after their last activity and are
deleted when a later session begins or the coordinator starts; a client may hold at most
``max_client_bytes`` of open sessions. Every rejection raises :class:`UploadError` (a 4xx) inside the
caller's transaction, so it changes nothing. Expired sessions are also swept every
``upload_sweep_s`` by the server (``app.py``), so abandoned chunks do not wait for the next session.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydantic import BaseModel

from lada_client.common.wire import (
    UPLOAD_KINDS,
    Ack,
    EnvelopeHeader,
    SealedEnvelope,
    UploadAbort,
    UploadBegin,
    UploadChunk,
    UploadCommit,
    UploadCommitted,
    UploadStatus,
    UploadStatusQuery,
    max_chunk_bytes,
    upload_chunk_count,
)
from lada_coordinator.server.errors import ApiError as UploadError
from lada_coordinator.stores import Connection, CoordinatorStore
from lada_coordinator.stores.records import ClientRecord
from lada_coordinator.validation import problem

log = logging.getLogger(__name__)

MAX_CHUNKS = 65536

# (db, client, target envelope) -> the target endpoint's sealed reply; raises its own 4xx errors
TargetRunner = Callable[[Connection, ClientRecord, SealedEnvelope], SealedEnvelope]
# (client, target header, reply) -> that reply sealed to the client, echoing the target's seq
ReplySealer = Callable[[ClientRecord, EnvelopeHeader, BaseModel], SealedEnvelope]


@dataclass(frozen=True)
class Session:
    session_id: str
    client_id: str
    target: EnvelopeHeader
    total_bytes: int
    sha256: str
    chunk_bytes: int
    expires_at: float
    committed: bool

    @property
    def n_chunks(self) -> int:
        return upload_chunk_count(self.total_bytes, self.chunk_bytes)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_bytes, self.total_bytes - index * self.chunk_bytes)


_COLUMNS = "session_id, client_id, target, total_bytes, sha256, chunk_bytes, expires_at, committed_at"


def _session(row: tuple) -> Session:
    sid, cid, target, total, sha, chunk, expires, committed = row
    return Session(
        sid, cid, EnvelopeHeader.model_validate_json(target), total, sha, chunk, expires, committed is not None
    )


class UploadSessions:
    """The upload-session handlers; each runs inside the caller's (``sealed``) transaction."""

    def __init__(
        self,
        store: CoordinatorStore,
        max_body_bytes: int,
        ttl_s: float,
        max_client_bytes: int,
        run_target: TargetRunner,
        seal_reply: ReplySealer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_chunk_bytes = max_chunk_bytes(max_body_bytes)
        self.ttl_s = ttl_s
        self.max_client_bytes = max_client_bytes
        self._run_target = run_target
        self._seal_reply = seal_reply
        self._clock = clock

    # ------------------------------------------------------------------------------ helpers
    def cleanup(self, db: Connection | None = None) -> int:
        """Delete expired sessions and their chunks; returns how many sessions went."""
        if db is None:
            with self.store.transaction() as conn:
                return self.cleanup(conn)
        now = self._clock()
        expired = [  # in one order, so that replicas sweeping at once wait for each other, never deadlock
            r[0]
            for r in db.execute(
                "SELECT session_id FROM upload_sessions WHERE expires_at <= ? ORDER BY session_id", (now,)
            )
        ]
        for sid in expired:
            db.execute("DELETE FROM upload_chunks WHERE session_id = ?", (sid,))
            db.execute("DELETE FROM upload_sessions WHERE session_id = ?", (sid,))
        if expired:
            log.info("removed %d expired upload session(s)", len(expired))
        return len(expired)

    def _load(self, db: Connection, client: ClientRecord, header: EnvelopeHeader, session_id: str) -> Session:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM upload_sessions WHERE session_id = ? AND client_id = ? AND expires_at > ?",
            (session_id, client.client_id, self._clock()),
        ).fetchone()
        if row is None:
            raise UploadError(
                404, "unknown_upload", f"no open upload session {session_id} for this client (never begun, or expired)"
            )
        session = _session(row)
        if header.round != session.target.round:
            raise UploadError(
                400, "round_mismatch", f"upload session {session_id} belongs to round {session.target.round}"
            )
        return session

    def _received(self, db: Connection, session_id: str) -> list[int]:
        return [
            r[0] for r in db.execute("SELECT idx FROM upload_chunks WHERE session_id = ? ORDER BY idx", (session_id,))
        ]

    def _status(self, db: Connection, s: Session) -> UploadStatus:
        return UploadStatus(
            session_id=s.session_id,
            total_bytes=s.total_bytes,
            chunk_bytes=s.chunk_bytes,
            n_chunks=s.n_chunks,
            received=self._received(db, s.session_id),
            committed=s.committed,
            expires_at=s.expires_at,
        )

    def _touch(self, db: Connection, s: Session) -> Session:
        expires = self._clock() + self.ttl_s
        db.execute("UPDATE upload_sessions SET expires_at = ? WHERE session_id = ?", (expires, s.session_id))
        return replace(s, expires_at=expires)

    # ----------------------------------------------------------------------------- handlers
    def begin(self, db: Connection, client: ClientRecord, header: EnvelopeHeader, p: UploadBegin) -> UploadStatus:
        target = p.target
        if target.client_id != client.client_id:
            raise UploadError(422, "bad_upload", "the target envelope must come from this client")
        if target.kind not in UPLOAD_KINDS:
            raise UploadError(
                422, "bad_upload", f"only {', '.join(UPLOAD_KINDS)} bodies may be chunked, not {target.kind!r}"
            )
        if target.round != header.round:
            raise UploadError(400, "round_mismatch", "header round and target round differ")
        if target.seq >= header.seq:
            raise UploadError(422, "bad_upload", "the target envelope must be sealed before upload.begin (lower seq)")
        if p.chunk_bytes > self.max_chunk_bytes:
            raise UploadError(
                413, "chunk_too_large", f"chunk_bytes must be at most {self.max_chunk_bytes} on this coordinator"
            )
        n_chunks = upload_chunk_count(p.total_bytes, p.chunk_bytes)
        if n_chunks > MAX_CHUNKS:
            raise UploadError(422, "bad_upload", f"{n_chunks} chunks is over {MAX_CHUNKS}: use larger chunks")
        self.cleanup(db)
        row = db.execute(
            f"SELECT {_COLUMNS} FROM upload_sessions WHERE client_id = ? AND target_seq = ?",
            (client.client_id, target.seq),
        ).fetchone()
        if row is not None:  # beginning again: resume the same session
            s = _session(row)
            if (s.target, s.total_bytes, s.sha256, s.chunk_bytes) != (target, p.total_bytes, p.sha256, p.chunk_bytes):
                raise UploadError(
                    409, "upload_conflict", f"an upload of sequence number {target.seq} with other contents exists"
                )
            return self._status(db, s if s.committed else self._touch(db, s))
        last_seq = db.execute("SELECT last_seq FROM clients WHERE client_id = ?", (client.client_id,)).fetchone()[0]
        if target.seq <= last_seq:
            raise UploadError(
                409,
                "replay",
                f"target sequence number {target.seq} is not above the last accepted one",
                last_seq=last_seq,
            )
        held = int(  # PostgreSQL's SUM of bigints is a numeric
            db.execute(
                "SELECT COALESCE(SUM(total_bytes), 0) FROM upload_sessions"
                " WHERE client_id = ? AND committed_at IS NULL AND expires_at > ?",
                (client.client_id, self._clock()),
            ).fetchone()[0]
        )
        if held + p.total_bytes > self.max_client_bytes:
            raise UploadError(
                413,
                "upload_quota",
                f"{held} bytes of open uploads + {p.total_bytes} would exceed {self.max_client_bytes} bytes "
                "for this client",
            )
        sid = secrets.token_hex(16)
        now = self._clock()
        db.execute(
            "INSERT INTO upload_sessions (session_id, client_id, target, target_seq, total_bytes, sha256, chunk_bytes,"
            " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sid,
                client.client_id,
                target.model_dump_json(),
                target.seq,
                p.total_bytes,
                p.sha256,
                p.chunk_bytes,
                now,
                now + self.ttl_s,
            ),
        )
        log.info(
            "upload %s begun by %s: %s, %d bytes in %d chunks",
            sid,
            client.client_id,
            target.kind,
            p.total_bytes,
            n_chunks,
        )
        return UploadStatus(
            session_id=sid,
            total_bytes=p.total_bytes,
            chunk_bytes=p.chunk_bytes,
            n_chunks=n_chunks,
            expires_at=now + self.ttl_s,
        )

    def chunk(self, db: Connection, client: ClientRecord, header: EnvelopeHeader, p: UploadChunk) -> Ack:
        s = self._load(db, client, header, p.session_id)
        if s.committed:
            raise UploadError(409, "upload_committed", f"upload session {s.session_id} is already committed")
        if p.index >= s.n_chunks:
            raise UploadError(422, "bad_chunk", f"chunk index {p.index} is out of range (0..{s.n_chunks - 1})")
        data = p.data
        if len(data) != s.chunk_len(p.index):
            raise UploadError(
                422, "bad_chunk", f"chunk {p.index} must be {s.chunk_len(p.index)} bytes, not {len(data)}"
            )
        held = db.execute(
            "SELECT data FROM upload_chunks WHERE session_id = ? AND idx = ?", (s.session_id, p.index)
        ).fetchone()
        if held is not None:
            if bytes(held[0]) != data:
                raise UploadError(409, "chunk_conflict", f"chunk {p.index} is already held with other bytes")
            return Ack(message="already stored")
        db.execute("INSERT INTO upload_chunks VALUES (?, ?, ?)", (s.session_id, p.index, data))
        self._touch(db, s)
        return Ack(message="stored")

    def status(
        self, db: Connection, client: ClientRecord, header: EnvelopeHeader, p: UploadStatusQuery
    ) -> UploadStatus:
        return self._status(db, self._load(db, client, header, p.session_id))

    def abort(self, db: Connection, client: ClientRecord, header: EnvelopeHeader, p: UploadAbort) -> Ack:
        row = db.execute(
            "SELECT committed_at IS NOT NULL FROM upload_sessions WHERE session_id = ? AND client_id = ?",
            (p.session_id, client.client_id),
        ).fetchone()
        if row is None:  # never begun, expired and swept, or aborted before: nothing to drop
            return Ack(message="no such session")
        if row[0]:
            raise UploadError(
                409, "upload_committed", f"upload session {p.session_id} is committed; its body was processed"
            )
        db.execute("DELETE FROM upload_chunks WHERE session_id = ?", (p.session_id,))
        db.execute("DELETE FROM upload_sessions WHERE session_id = ?", (p.session_id,))
        log.info("upload %s aborted by %s", p.session_id, client.client_id)
        return Ack(message="aborted")

    def commit(self, db: Connection, client: ClientRecord, header: EnvelopeHeader, p: UploadCommit) -> UploadCommitted:
        s = self._load(db, client, header, p.session_id)
        if s.committed:  # a retried commit whose first answer was lost: same answer as a retried upload
            return UploadCommitted(
                session_id=s.session_id, reply=self._seal_reply(client, s.target, Ack(message="already stored"))
            )
        held = [
            r[0] for r in db.execute("SELECT idx FROM upload_chunks WHERE session_id = ? ORDER BY idx", (s.session_id,))
        ]
        if len(held) != s.n_chunks:
            missing = sorted(set(range(s.n_chunks)) - set(held))
            raise UploadError(
                409, "upload_incomplete", f"{len(missing)} of {s.n_chunks} chunks missing (first {missing[0]})"
            )
        # At most two copies of the body in memory: chunks are read one at a time into a buffer of
        # the declared length and hashed as they come, and the buffer goes as soon as the
        # envelope has copied its ciphertext out of it.
        body, digest, at = bytearray(s.total_bytes), hashlib.sha256(), 0
        for (data,) in db.execute("SELECT data FROM upload_chunks WHERE session_id = ? ORDER BY idx", (s.session_id,)):
            if at + len(data) > s.total_bytes:
                raise UploadError(422, "hash_mismatch", "the reassembled body is longer than declared")
            body[at : at + len(data)] = data
            digest.update(data)
            at += len(data)
        if at != s.total_bytes or digest.hexdigest() != s.sha256:
            raise UploadError(
                422, "hash_mismatch", "the reassembled body does not match the declared length and SHA-256"
            )
        try:
            envelope = SealedEnvelope.from_bytes(body)
        except ValueError as exc:  # pydantic's ValidationError included
            raise UploadError(422, "malformed_upload", problem(exc)) from exc
        del body
        if envelope.header != s.target:
            raise UploadError(
                422, "bad_upload", "the reassembled envelope's header is not the one declared at upload.begin"
            )
        reply = self._run_target(db, client, envelope)  # the target endpoint's checks and handler
        now = self._clock()
        db.execute(
            "UPDATE upload_sessions SET committed_at = ?, expires_at = ? WHERE session_id = ?",
            (now, now + self.ttl_s, s.session_id),
        )
        db.execute("DELETE FROM upload_chunks WHERE session_id = ?", (s.session_id,))
        log.info(
            "upload %s committed: %s from %s, %d bytes", s.session_id, s.target.kind, client.client_id, s.total_bytes
        )
        return UploadCommitted(session_id=s.session_id, reply=reply)
