"""The coordinator's store under its former name, kept for existing imports (benchmarks, scripts).

The store layer lives in :mod:`lada_coordinator.stores`: the interface every backend implements and
the SQL they share (``stores/base.py``), the records it returns (``stores/records.py``), the SQLite
backend (``stores/sqlite.py``, the default) and the PostgreSQL one (``stores/postgres.py``).
``Store`` here is the SQLite store, as it always was: ``Store(path, group_commit=True)``; every
other name (``ClientRecord``, ``DEFAULT_GROUP``, ``SCHEMA`` …) is the one of ``records.py`` or
``base.py``.
"""

from __future__ import annotations

from typing import Any

from lada_coordinator.stores import base, records
from lada_coordinator.stores.sqlite import SQLiteStore as Store

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    for module in (records, base):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
