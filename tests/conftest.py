"""Shared fixtures: one tiny, offline-built federation world per test session, and a throwaway
PostgreSQL server (Debian's binaries) for the tests of the PostgreSQL store."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
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
        from lada_coordinator.stores import open_store
        from lada_coordinator.stores.records import DEFAULT_GROUP

        store = open_store(config)
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


# ------------------------------------------------------------------------------------ PostgreSQL
#: the unprivileged user the server runs as when the tests run as root (initdb refuses root)
PG_USER = "postgres"
PG_FALLBACK_USER = "lada-test-pg"


def _pg_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _pg_run_as() -> tuple[list[str], str | None]:
    """The command prefix that runs the server's commands, and the user they run as: none as a
    normal user; as root, an unprivileged user (made if there is none), through runuser."""
    if os.geteuid() != 0:
        return [], None
    if shutil.which("runuser") is None:
        pytest.skip("PostgreSQL tests: running as root, and no runuser to start the server as another user")
    for user in (PG_USER, PG_FALLBACK_USER):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
        except KeyError:
            continue
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_FALLBACK_USER],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"PostgreSQL tests: running as root and cannot make a user to run the server as: {made.stderr}")
    return ["runuser", "-u", PG_FALLBACK_USER, "--"], PG_FALLBACK_USER


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory (data, socket, log), on a free port
    of 127.0.0.1, fsync on, trust authentication for its superuser ``lada``."""

    def __init__(self, bindir: Path, root: Path, port: int, run_as: list[str]) -> None:
        self.bindir, self.root, self.port, self.run_as = bindir, root, port, run_as
        self.data, self.log = root / "data", root / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "lada", "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-instructions",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=32MB"
        )
        started = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
            "start",
        )  # fmt: skip
        if started.returncode != 0:
            tail = self.log.read_text()[-800:] if self.log.exists() else started.stderr
            raise RuntimeError(f"pg_ctl start failed: {tail.strip()}")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)

    def url(self, dbname: str) -> str:
        return f"postgresql://lada@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; the test skips, saying why, where none can start
    (no server binaries: scripts/postgres.sh installs Debian's; no psycopg; root without a user to
    run it as)."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: pip install './coordinator[postgres]'")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL tests: no initdb/pg_ctl (Debian's postgresql package; bash scripts/postgres.sh)")
    run_as, user = _pg_run_as()
    root = Path(tempfile.mkdtemp(prefix="lada-pg-"))
    if user is not None:
        shutil.chown(root, user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = PostgresServer(bindir, root, port, run_as)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests: the server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the session's PostgreSQL server (dropped after the test)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
