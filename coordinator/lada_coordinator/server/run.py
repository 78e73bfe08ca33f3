"""Assemble and run a coordinator process: store, identity, LLM host, round engine, HTTP server."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from lada_client.common.crypto import Identity
from lada_client.data.federation import FederationData, load_public
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.llm.host import LLMHost
from lada_coordinator.rounds import RoundEngine
from lada_coordinator.server.app import create_app
from lada_coordinator.store import Store

log = logging.getLogger(__name__)


def build(config: CoordinatorConfig, llm_eval_dir: Path | None = None):
    """Return (app, engine, store) wired together, without starting anything."""
    if config.score_only_update == "server":
        for model_name, ckpt in config.slm_checkpoints.items():
            if not (ckpt / "config.json").is_file():
                raise ValueError(f"slm_checkpoints[{model_name!r}]: {ckpt} is not a transformers checkpoint directory (no config.json)")
    store = Store(config.db_path)
    identity = Identity.load_or_create(config.state_dir / "coordinator.key")
    public = load_public(config.public_data)
    llm_eval = None
    if llm_eval_dir is not None:  # evaluation hook for local federations: held-out test splits
        llm_eval = [s for c in FederationData.load(llm_eval_dir).clients for s in c.test[:64]]

    def llm_factory() -> LLMHost:
        return LLMHost(
            config.llm_dir, config.state_dir / "llm_adapter", config.llm_lora, config.llm_distill.max_length, config.max_new_tokens
        )

    engine = RoundEngine(config, store, public, llm_factory, llm_eval)
    app = create_app(
        store, identity, engine, config.max_body_bytes, config.upload_ttl_s, config.upload_max_client_bytes
    )
    return app, engine, store


def serve(config: CoordinatorConfig, llm_eval_dir: Path | None = None, ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None) -> None:
    app, engine, store = build(config, llm_eval_dir)
    engine.start()
    log.info("coordinator on %s:%d (db %s)", config.host, config.port, config.db_path)
    try:
        uvicorn.run(
            app, host=config.host, port=config.port, log_level="warning",
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
    finally:
        engine.stop_event.set()
        engine.join(timeout=10)
        store.close()
