"""Group commit: many requests share an fsync, and none returns before its writes are committed."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lada_coordinator.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "c.sqlite")
    yield s
    s.close()


def _committed_tokens(path: Path) -> set[str]:
    """What another connection (another process, after a crash) would find."""
    with sqlite3.connect(path) as other:
        return {row[0] for row in other.execute("SELECT token_hash FROM tokens")}


def test_concurrent_writers_share_commits_and_each_returns_committed(store: Store, tmp_path: Path) -> None:
    threads, each = 8, 25
    barrier = threading.Barrier(threads)
    missing: list[str] = []

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(each):
            token = f"{t:02d}{i:03d}" + "0" * 59
            store.add_token(token, expires_at=None)
            if token not in _committed_tokens(tmp_path / "c.sqlite"):
                missing.append(token)  # acknowledged but not committed: the bug group commit must not have

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not missing
    assert len(_committed_tokens(tmp_path / "c.sqlite")) == threads * each
    assert store.stats["transactions"] == threads * each
    # requests that arrived during a commit shared the next one
    assert store.stats["commits"] < store.stats["transactions"]


def test_a_failing_request_rolls_back_only_its_own_writes(store: Store, tmp_path: Path) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('kept', 0)")
        with pytest.raises(ValueError), store.transaction() as inner:  # a savepoint of the outer one
            inner.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('dropped', 0)")
            raise ValueError("refused")
    assert _committed_tokens(tmp_path / "c.sqlite") == {"kept"}
    with pytest.raises(ValueError), store.transaction() as db:  # alone in its group: the transaction ends
        db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('alone', 0)")
        raise ValueError("refused")
    assert _committed_tokens(tmp_path / "c.sqlite") == {"kept"}
    store.add_token("after", expires_at=None)  # the store is usable afterwards
    assert _committed_tokens(tmp_path / "c.sqlite") == {"kept", "after"}


def test_reads_outside_a_transaction_see_only_committed_writes(store: Store) -> None:
    inside, release = threading.Event(), threading.Event()
    seen: list[list[str]] = []

    def slow_writer() -> None:
        with store.transaction() as db:
            db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('pending', 0)")
            seen.append([t.token_id for t in store.tokens()])  # inside: its own write
            inside.set()
            release.wait(10)

    w = threading.Thread(target=slow_writer)
    w.start()
    assert inside.wait(10)
    during = [t.token_id for t in store.tokens()]  # another thread, while the write is open
    release.set()
    w.join(10)
    assert seen == [["pending"]]
    assert during == []
    assert [t.token_id for t in store.tokens()] == ["pending"]


def test_durable_commits_flush_the_wal_and_read_only_ones_do_not(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the real flush, recorded
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    wal = str(tmp_path / "c.sqlite-wal")
    with store.transaction(durable=False) as db:
        db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('bookkeeping', 0)")
    assert wal not in flushed
    assert "bookkeeping" in _committed_tokens(tmp_path / "c.sqlite")  # committed, only not flushed
    store.add_token("upload", expires_at=None)
    assert flushed.count(wal) == 1
    assert store.stats["commits_without_fsync"] == 1


def test_one_commit_per_request_mode_still_works(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite", group_commit=False)
    try:
        store.add_token("a" * 64, expires_at=None)
        with pytest.raises(ValueError), store.transaction() as db:
            db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('b', 0)")
            raise ValueError("refused")
        assert _committed_tokens(tmp_path / "c.sqlite") == {"a" * 64}
        assert store.stats == {"transactions": 2, "commits": 1, "commits_without_fsync": 0}
    finally:
        store.close()
