"""A real coordinator HTTP server (uvicorn on 127.0.0.1) over a real SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from lada_client.common.crypto import Identity
from lada_client.transport import Transport
from lada_coordinator.config import CoordinatorConfig


@pytest.fixture()
def db_dump() -> Callable[[Path], list[str]]:
    """Full SQL dump of a database: equal dumps mean nothing changed."""

    def dump(db: Path) -> list[str]:
        conn = sqlite3.connect(str(db))
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    return dump


@pytest.fixture()
def server(tmp_path, tiny_world, free_port, serve_coordinator):
    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        port=free_port,
        max_body_bytes=200_000,
        rounds=2,
    )
    with serve_coordinator(config) as (url, store):
        yield url, store, config


@pytest.fixture()
def enroll(issue) -> Callable[..., Transport]:
    """``enroll(server, name)``: enroll a fresh identity with a freshly issued token on the server
    ``(url, store, config)``; returns its transport. Keyword arguments go to ``Transport.enroll``."""

    def _enroll(server, name: str = "dev1", **kwargs) -> Transport:
        url, _, config = server
        t = Transport(url, Identity.generate())
        t.enroll(issue(config), name, **kwargs)
        return t

    return _enroll
