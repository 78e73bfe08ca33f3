"""Commits: none returns before its writes are committed, a failing request rolls back only its own
writes, and with SQLite's group commit many requests share an fsync.

The tests that take ``store`` run on SQLite and on PostgreSQL (``conftest.py``); what another
process would find is read through a second store on the same database (``new_store()``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lada_coordinator.store import Store
from lada_coordinator.stores import CoordinatorStore


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "c.sqlite")
    yield s
    s.close()


def _committed_tokens(other: CoordinatorStore) -> set[str]:
    """What another connection (another process, after a crash) would find."""
    return {row[0] for row in other._all("SELECT token_hash FROM tokens")}


def test_concurrent_writers_each_return_committed(new_store: Callable[[], CoordinatorStore]) -> None:
    store, other = new_store(), new_store()
    threads, each = 8, 25
    barrier = threading.Barrier(threads)
    missing: list[str] = []

    def writer(t: int) -> None:
        barrier.wait()
        for i in range(each):
            token = f"{t:02d}{i:03d}" + "0" * 59
            store.add_token(token, expires_at=None)
            if token not in _committed_tokens(other):
                missing.append(token)  # acknowledged but not committed: the bug a commit must not have

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not missing
    assert len(_committed_tokens(other)) == threads * each
    assert store.stats["transactions"] == threads * each
    if isinstance(store, Store):  # SQLite's group commit: requests that arrived during a commit shared the next one
        assert store.stats["commits"] < store.stats["transactions"]


def test_a_failing_request_rolls_back_only_its_own_writes(new_store: Callable[[], CoordinatorStore]) -> None:
    store, other = new_store(), new_store()
    with store.transaction() as db:
        db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('kept', 0)")
        with pytest.raises(ValueError), store.transaction() as inner:  # a savepoint of the outer one
            inner.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('dropped', 0)")
            raise ValueError("refused")
    assert _committed_tokens(other) == {"kept"}
    with pytest.raises(ValueError), store.transaction() as db:  # alone in its group: the transaction ends
        db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('alone', 0)")
        raise ValueError("refused")
    assert _committed_tokens(other) == {"kept"}
    store.add_token("after", expires_at=None)  # the store is usable afterwards
    assert _committed_tokens(other) == {"kept", "after"}


def test_reads_outside_a_transaction_see_only_committed_writes(store: CoordinatorStore) -> None:
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
    sqlite_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
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
    other = Store(tmp_path / "c.sqlite")
    try:
        assert "bookkeeping" in _committed_tokens(other)  # committed, only not flushed
    finally:
        other.close()
    store.add_token("upload", expires_at=None)
    assert flushed.count(wal) == 1
    assert store.stats["commits_without_fsync"] == 1


def test_read_only_commits_do_not_wait_for_the_disk_on_postgres(postgres_url: str) -> None:
    """``durable=False`` commits with ``synchronous_commit`` off for that transaction only."""
    from lada_coordinator.stores.postgres import PostgresStore

    store = PostgresStore(postgres_url)
    try:
        with store.transaction(durable=False) as db:
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with store.transaction() as db:
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert store._one("SHOW synchronous_commit") == ("on",)
        assert store.stats == {"transactions": 2, "commits": 2, "commits_without_fsync": 1}
    finally:
        store.close()


def test_one_commit_per_request_mode_still_works(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite", group_commit=False)
    try:
        store.add_token("a" * 64, expires_at=None)
        with pytest.raises(ValueError), store.transaction() as db:
            db.execute("INSERT INTO tokens (token_hash, created_at) VALUES ('b', 0)")
            raise ValueError("refused")
        assert _committed_tokens(store) == {"a" * 64}
        assert store.stats == {"transactions": 2, "commits": 1, "commits_without_fsync": 0}
    finally:
        store.close()
