"""Assemble and run a coordinator process: store, identity, LLM host, round engine, HTTP server."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import typing
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from lada_client.common.wire import ROUTES
from lada_client.config import ClientConfig
from lada_client.data.federation import FederationData, load_public
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.credentials import load_identity, operator_token
from lada_coordinator.llm.host import LLMHost
from lada_coordinator.operator_client import write_endpoint
from lada_coordinator.rounds import RoundEngine
from lada_coordinator.server.app import create_app
from lada_coordinator.server.limits import guarded_protocol
from lada_coordinator.stores import CoordinatorStore, open_store

log = logging.getLogger(__name__)

#: test questions per client the LLM is evaluated on unless told: as many as a client evaluates
#: itself on by default, so that both are measured on the same questions
LLM_EVAL_SIZE = typing.cast(int, next(f.default for f in dataclasses.fields(ClientConfig) if f.name == "eval_size"))


def build(
    config: CoordinatorConfig, llm_eval_dir: Path | None = None, llm_eval_size: int | None = None
) -> tuple[FastAPI, RoundEngine, CoordinatorStore]:
    """Return (app, engine, store) wired together, without starting anything. With ``llm_eval_dir``
    (local federations), the LLM is evaluated each round on the first ``llm_eval_size`` (default
    :data:`LLM_EVAL_SIZE`) test questions of every client there, the questions each client
    evaluates itself on. The engine runs rounds only while this replica leads (``engine.lease``:
    always with SQLite; with PostgreSQL, the replica holding the database's engine lock)."""
    if config.score_only_update == "server":
        for model_name, ckpt in config.slm_checkpoints.items():
            if not (ckpt / "config.json").is_file():
                raise ValueError(
                    f"slm_checkpoints[{model_name!r}]: {ckpt} is not a transformers checkpoint directory"
                    " (no config.json)"
                )
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(config)
    identity = load_identity(config.state_dir)
    public = load_public(config.public_data)
    llm_eval = None
    if llm_eval_dir is not None:  # evaluation hook for local federations: held-out test splits
        size = LLM_EVAL_SIZE if llm_eval_size is None else llm_eval_size
        llm_eval = [s for c in FederationData.load(llm_eval_dir).clients for s in c.test[:size]]

    def llm_factory() -> LLMHost:
        backend = None
        if config.llm_server is not None:  # generation (and scoring, if it can) on an inference engine
            from lada_coordinator.llm.serving import OpenAICompletionsBackend

            backend = OpenAICompletionsBackend(config.llm_server)
        elif config.llm_dir is None:
            raise ValueError("this coordinator has no llm_dir, and a round needed the LLM")
        return LLMHost(
            config.llm_dir,
            config.state_dir / "llm_adapter",
            config.llm_lora,
            config.llm_distill.max_length,
            config.max_new_tokens,
            backend=backend,
            compute=config.llm_compute,
        )

    engine = RoundEngine(config, store, public, llm_factory, llm_eval, lease=store.leadership(replica_name(config)))
    app = create_app(store, identity, engine, config, operator_token(config.state_dir))
    return app, engine, store


def replica_name(config: CoordinatorConfig) -> str:
    """How this process is named among the replicas that share a database (``/v1/status``)."""
    return f"{socket.gethostname()}:{config.port}/{os.getpid()}"


def uvicorn_config(
    app: FastAPI, config: CoordinatorConfig, ssl_certfile: str | None = None, ssl_keyfile: str | None = None
) -> uvicorn.Config:
    """The HTTP server with the connection bounds of ``config`` (``server/limits.py``); the bound on
    requests handled at once is the app's own (``RequestLimits``), not uvicorn's ``limit_concurrency``,
    which counts idle and half-open connections too."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        http=guarded_protocol(config.header_timeout_s, config.max_connections),
        timeout_keep_alive=5,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_material(
    config: CoordinatorConfig, cert: Path | None, key: Path | None, insecure_http: bool
) -> tuple[Path | None, Path | None]:
    """TLS is on unless the coordinator listens on loopback only, or the operator says otherwise.

    Without ``--tls-cert``/``--tls-key`` on a non-loopback address, a self-signed certificate for
    that address is made once in ``state_dir/tls`` (devices trust it through ``ca_cert``; their
    enrollment is pinned to the coordinator's key by the token in any case). ``--insecure-http``
    serves plain http anyway, with a warning."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if cert is not None:
        return cert, key
    if is_loopback(config.host):
        return None, None
    if insecure_http:
        log.warning(
            "serving plain http on %s (--insecure-http): traffic metadata and timing are visible on the network",
            config.host,
        )
        return None, None
    from lada_coordinator.server.tls import generate_self_signed

    tls_dir = config.state_dir / "tls"
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    if not (cert.exists() and key.exists()):
        wildcard = config.host in ("0.0.0.0", "::", "")
        hosts = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"] if wildcard else [config.host]
        generate_self_signed(tls_dir, list(dict.fromkeys(hosts)))
        log.info(
            "generated a self-signed TLS certificate for %s in %s; give devices ca_cert=%s", config.host, tls_dir, cert
        )
    return cert, key


def serve(
    config: CoordinatorConfig,
    llm_eval_dir: Path | None = None,
    llm_eval_size: int | None = None,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    insecure_http: bool = False,
) -> None:
    cert, key = tls_material(config, ssl_certfile, ssl_keyfile, insecure_http)
    app, engine, store = build(config, llm_eval_dir, llm_eval_size)
    engine.lease.start()
    engine.start()
    scheme = "https" if cert else "http"
    write_endpoint(config.state_dir, scheme, config.host, config.port, cert)  # for `lada-coordinator status`
    log.info(
        "coordinator %s on %s://%s:%d (db %s, key %s…); operator dashboard at %s",
        engine.lease.replica,
        scheme,
        config.host,
        config.port,
        store.describe(),
        load_identity(config.state_dir).public.fingerprint()[:16],
        ROUTES["dashboard"],
    )
    try:
        uvicorn.Server(
            uvicorn_config(
                app,
                config,
                ssl_certfile=str(cert) if cert else None,
                ssl_keyfile=str(key) if key else None,
            )
        ).run()
    finally:
        engine.stop_event.set()
        engine.join(timeout=10)
        engine.lease.close()  # another replica's engine may take over now
        store.close()
