"""The store under test, on each backend: the tests that take ``store`` or ``new_store`` run once on
SQLite and once on PostgreSQL (skipped, saying why, where no PostgreSQL server can start)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lada_coordinator.stores import CoordinatorStore


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], CoordinatorStore]]:
    """``new_store()``: a store on this test's database; each call opens another instance on the
    same database, as another process (or replica) would. All are closed after the test."""
    if request.param == "postgres":
        from lada_coordinator.stores.postgres import PostgresStore

        url = request.getfixturevalue("postgres_url")

        def make() -> CoordinatorStore:
            return PostgresStore(url)
    else:
        from lada_coordinator.stores.sqlite import SQLiteStore

        def make() -> CoordinatorStore:
            return SQLiteStore(tmp_path / "c.sqlite")

    opened: list[CoordinatorStore] = []

    def new() -> CoordinatorStore:
        opened.append(make())
        return opened[-1]

    yield new
    for store in opened:
        store.close()


@pytest.fixture()
def store(new_store: Callable[[], CoordinatorStore]) -> CoordinatorStore:
    return new_store()
