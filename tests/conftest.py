"""Shared fixtures: one tiny, offline-built federation world per test session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


@pytest.fixture()
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
