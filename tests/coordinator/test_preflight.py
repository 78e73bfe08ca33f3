"""``lada-coordinator check``: the real CLI on a fresh state directory (the tiny LLM really loads,
nothing is created), and each failure it exists to catch: a bad config, a damaged database, a port
in use, TLS material that does not match or does not name the host."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from lada_coordinator.preflight import run_checks
from lada_coordinator.server.tls import generate_self_signed


def _config(tmp_path: Path, world: dict[str, Path], port: int, **extra: object) -> Path:
    body = {
        "db_path": str(tmp_path / "state" / "c.sqlite"),
        "state_dir": str(tmp_path / "state"),
        "llm_dir": str(world["llm"]),
        "public_data": str(world["data"]),
        "port": port,
        **extra,
    }
    path = tmp_path / "coordinator.json"
    path.write_text(json.dumps(body))
    return path


def _cli(*args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "lada_coordinator.cli", "check", "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in body["checks"]}


def test_fresh_state_dir_is_ready_and_left_untouched(tmp_path, tiny_world, free_port):
    code, checks = _cli("--config", str(_config(tmp_path, tiny_world, free_port)))
    assert code == 0, checks
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert "loads" in checks["teacher"]["detail"] and "M parameters" in checks["teacher"]["detail"]
    assert "made on first start" in checks["database"]["detail"]
    assert "plain http on loopback" in checks["tls"]["detail"]
    assert not (tmp_path / "state").exists()  # a check creates nothing


def test_bad_config_is_one_failure_naming_the_field(tmp_path, tiny_world, free_port):
    code, checks = _cli("--config", str(_config(tmp_path, tiny_world, free_port, rounds=0)))
    assert code == 1 and checks["config"]["status"] == "fail" and "rounds" in checks["config"]["detail"]
    assert checks["port"]["status"] == "skip"


def test_damaged_database_and_busy_port_fail(tmp_path, tiny_world, free_port):
    cfg = _config(tmp_path, tiny_world, free_port)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "c.sqlite").write_bytes(b"not a database" * 100)
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port))
        s.listen()
        checks = {c.name: c for c in run_checks(cfg, load_llm=False)}
    assert checks["database"].status == "fail" and "not a readable SQLite" in checks["database"].detail
    assert checks["port"].status == "fail" and "another coordinator running" in checks["port"].detail
    assert checks["teacher"].status == "ok" and "not loaded" in checks["teacher"].detail


def test_tls_material_is_checked_as_serve_would_use_it(tmp_path, tiny_world, free_port):
    cfg = _config(tmp_path, tiny_world, free_port)
    cert, key = generate_self_signed(tmp_path / "a", ["127.0.0.1"])
    other_cert, other_key = generate_self_signed(tmp_path / "b", ["localhost"])

    def tls(c: Path | None, k: Path | None):
        (check,) = [x for x in run_checks(cfg, load_llm=False, tls_cert=c, tls_key=k) if x.name == "tls"]
        return check

    good = tls(cert, key)
    assert good.status == "ok" and "127.0.0.1" in good.detail and "days left" in good.detail
    assert tls(cert, other_key).status == "fail" and "is not the key of" in tls(cert, other_key).detail
    named = tls(other_cert, other_key)
    assert named.status == "warn" and "127.0.0.1 is not among its names" in named.detail
    assert tls(cert, None).status == "fail"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    assert tls(garbage, key).status == "fail"


def test_an_engine_that_does_not_answer_fails_naming_its_url(tmp_path, tiny_world, free_port):
    with socket.socket() as s:  # bound, not listening: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        engine = f"http://127.0.0.1:{s.getsockname()[1]}"
        server = {"url": engine, "model": "llm", "prompt_logprobs": "none", "retries": 5}
        checks = {
            c.name: c for c in run_checks(_config(tmp_path, tiny_world, free_port, llm_server=server), load_llm=False)
        }
    assert checks["llm server"].status == "fail" and engine in checks["llm server"].detail, checks["llm server"]
    assert checks["teacher"].status == "ok"  # the in-process LLM is checked on its own


def test_no_engine_configured_no_engine_check(tmp_path, tiny_world, free_port):
    assert "llm server" not in {c.name for c in run_checks(_config(tmp_path, tiny_world, free_port), load_llm=False)}
