"""``lada-client check`` as a user runs it (the real CLI in a subprocess) against a real coordinator:
ready, score-only, wrong token, bad config, unreachable coordinator, and https with and without the
coordinator's certificate trusted. Every outcome is a table or JSON, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lada_client.common.enrollment import EnrollmentToken
from lada_client.common.preflight import Check, render
from lada_coordinator.config import CoordinatorConfig


def _check(config: Path, *args: str) -> tuple[int, dict[str, Check], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lada_client.cli", "check", "--config", str(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    checks = {c["name"]: Check(**c) for c in body["checks"]}
    assert body["ok"] == (proc.returncode == 0)
    return proc.returncode, checks, proc.stderr


def _client_config(path: Path, world: dict[str, Path], url: str, **extra: object) -> Path:
    body = {
        "coordinator_url": url,
        "name": "client0",
        "state_dir": str(path.parent / "state"),
        "data_dir": str(world["data"]),
        "scoring_model": str(world["client0"] / "onnx" / "model.onnx"),
        "base_model_dir": str(world["client0"] / "base"),
        **extra,
    }
    path.write_text(json.dumps({k: v for k, v in body.items() if v is not None}))
    return path


def _coordinator(tmp_path: Path, world: dict[str, Path], port: int) -> CoordinatorConfig:
    return CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "cstate",
        llm_dir=world["llm"],
        public_data=world["data"],
        port=port,
    )


def test_a_ready_device_passes_and_a_wrong_token_or_missing_trainer_is_named(
    tmp_path, tiny_world, free_port, serve_coordinator, issue
):
    config = _coordinator(tmp_path, tiny_world, free_port)
    with serve_coordinator(config) as (url, _):
        cfg = _client_config(tmp_path / "client.json", tiny_world, url)
        code, checks, _ = _check(cfg, "--token", issue(config))
        assert code == 0, checks
        assert {c.status for c in checks.values()} == {"ok"}, checks
        assert "can train" in checks["training"].detail and "will enroll with token" in checks["enrollment"].detail
        assert "plain http on loopback" in checks["coordinator"].detail
        assert "one pair scored" in checks["scoring model"].detail

        # a token of another coordinator: the URL is wrong (or something in between answers)
        code, checks, _ = _check(cfg, "--token", str(EnrollmentToken.new("ab" * 16)))
        assert (
            code == 1 and checks["coordinator"].status == "fail" and "the token names" in checks["coordinator"].detail
        )

        # no base checkpoint: a score-only device is ready, with a warning that says so
        no_base = _client_config(tmp_path / "score-only.json", tiny_world, url, base_model_dir=None)
        code, checks, _ = _check(no_base, "--token", issue(config))
        assert code == 0 and checks["training"].status == "warn" and "score-only" in checks["training"].detail

        # no token and not enrolled: cannot take part
        code, checks, _ = _check(cfg)
        assert code == 1 and checks["enrollment"].status == "fail"


def test_bad_config_and_unreachable_coordinator_are_one_clear_failure_each(tmp_path, tiny_world, free_port):
    bad = _client_config(tmp_path / "bad.json", tiny_world, "http://127.0.0.1:1", batch_size="16")
    code, checks, _ = _check(bad)
    assert code == 1 and checks["config"].status == "fail" and "batch_size" in checks["config"].detail
    assert checks["coordinator"].status == "skip"

    # nothing listens on free_port
    cfg = _client_config(tmp_path / "c.json", tiny_world, f"http://127.0.0.1:{free_port}")
    code, checks, _ = _check(cfg, "--token", str(EnrollmentToken.new("ab" * 16)))
    assert code == 1 and checks["coordinator"].status == "fail" and "cannot connect" in checks["coordinator"].detail
    assert checks["clock"].status == "skip" and checks["scoring model"].status == "ok"
    assert render(list(checks.values())).splitlines()[-1].startswith("not ready: ")


def test_https_needs_the_coordinators_certificate_trusted(tmp_path, tiny_world, free_port, serve_coordinator, issue):
    pytest.importorskip("cryptography")
    from lada_coordinator.server.tls import generate_self_signed

    cert, key = generate_self_signed(tmp_path / "tls", ["127.0.0.1"])
    config = _coordinator(tmp_path, tiny_world, free_port)
    with serve_coordinator(config, ssl_certfile=str(cert), ssl_keyfile=str(key)) as (url, _):
        assert url.startswith("https://")
        token = issue(config)
        untrusted = _client_config(tmp_path / "untrusted.json", tiny_world, url)
        code, checks, _ = _check(untrusted, "--token", token)
        assert code == 1 and "not trusted" in checks["coordinator"].detail and "ca_cert" in checks["coordinator"].detail
        trusted = _client_config(tmp_path / "trusted.json", tiny_world, url, ca_cert=str(cert))
        code, checks, _ = _check(trusted, "--token", token)
        assert code == 0, checks
        assert f"TLS verified against {cert}" in checks["coordinator"].detail
        assert checks["clock"].status == "ok"
