"""The coordinator's durable state, behind one interface with two backends.

``base.py``      :class:`CoordinatorStore`, the interface the server, the round engine and the
                 operator commands use, with every method that is plain SQL written once
``records.py``   what it returns (devices, tokens, rounds, quarantines) and its errors
``sqlite.py``    :class:`~lada_coordinator.stores.sqlite.SQLiteStore`: the default, one file, one
                 coordinator process (``db_path``)
``postgres.py``  :class:`~lada_coordinator.stores.postgres.PostgresStore`: a PostgreSQL database that
                 several coordinator replicas share, one of which runs the round engine
                 (``database_url``; ``docs/deployment.md``)

:func:`open_store` opens the one a configuration names; nothing else should construct a backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lada_coordinator.stores.base import Connection, CoordinatorStore, Lease, SoleLease

if TYPE_CHECKING:
    from lada_coordinator.config import CoordinatorConfig

__all__ = ["Connection", "CoordinatorStore", "Lease", "SoleLease", "open_store"]


def open_store(config: CoordinatorConfig) -> CoordinatorStore:
    """The store of ``config``: PostgreSQL at ``database_url`` when it is set, else the SQLite file
    ``db_path`` (with ``group_commit``)."""
    if config.database_url is not None:
        from lada_coordinator.stores.postgres import PostgresStore

        return PostgresStore(config.database_url)
    from lada_coordinator.stores.sqlite import SQLiteStore

    assert config.db_path is not None  # the config's own check: one of the two is set
    return SQLiteStore(config.db_path, group_commit=config.group_commit)
