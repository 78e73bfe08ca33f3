"""Shared fixtures: one tiny, offline-built federation world per test session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the tiny world (directly or through another fixture) is marked
    ``world``: building it trains and exports models once per test run, so the unit tier leaves
    these out (``-m "not slow and not e2e and not world"``)."""
    for item in items:
        if "tiny_world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.world)


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _running_coordinator(config, **tls: str) -> Iterator[tuple[str, object]]:
    """A real coordinator HTTP server for ``config`` (uvicorn in a thread on 127.0.0.1, round
    engine not started: tests open rounds themselves); yields (url, store), stops on exit.
    ``ssl_certfile=``/``ssl_keyfile=`` serve https (the certificate is trusted as its own CA)."""
    import httpx
    import uvicorn

    from lada_coordinator.server.run import build, uvicorn_config

    app, _, store = build(config)
    srv = uvicorn.Server(uvicorn_config(app, config, **tls))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{config.port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", verify=tls.get("ssl_certfile", True)).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url, store
    finally:
        srv.should_exit = True
        thread.join(5)
        store.close()


@pytest.fixture()
def issue():
    """``issue(config)``: a one-time enrollment token of the coordinator of ``config`` (which
    names its key, as ``lada-coordinator issue-token`` does); ``n=`` for a list, ``ttl_s=`` and
    ``group=`` as the CLI's flags."""

    def _issue(config, n: int | None = None, ttl_s: float | None = None, group: str | None = None):
        from lada_coordinator.credentials import DEFAULT_TOKEN_TTL_S, issue_tokens, load_identity
        from lada_coordinator.store import DEFAULT_GROUP, Store

        store = Store(config.db_path)
        try:
            tokens = issue_tokens(
                store, load_identity(config.state_dir), n or 1, ttl_s or DEFAULT_TOKEN_TTL_S, group or DEFAULT_GROUP
            )
        finally:
            store.close()
        return tokens if n is not None else tokens[0]

    return _issue


@pytest.fixture()
def serve_coordinator():
    """``with serve_coordinator(config) as (url, store):`` a real coordinator server (see
    :func:`_running_coordinator`), for tests that need their own configuration."""
    return _running_coordinator


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data, tokenizer, LLM and 3 SLMs (+ ONNX exports), built with a few warm-up steps."""
    pytest.importorskip("torch")
    from lada_coordinator.federation import FederationSettings, prepare

    settings = FederationSettings(
        workdir=tmp_path_factory.mktemp("world"),
        clients=3,
        n_train=40,
        n_test=16,
        n_public=160,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
    )
    paths = prepare(settings)
    paths["workdir"] = settings.workdir
    paths["tokenizer"] = settings.workdir / "tokenizer"
    return paths
