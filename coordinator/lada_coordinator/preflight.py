"""``lada-coordinator check``: will ``serve`` start with this config, and what would stop it.

Checks the config file, the packages, the state directory and database, the public pool, the
teacher (the LLM checkpoint loaded as ``serve`` loads it, or the precomputed teacher paths), the
inference engine of ``llm_server`` (asked once, without retries, which models it serves), the TLS
material ``serve`` would use, and whether the port is free. Nothing is created or migrated: a
missing database or identity is reported as "made on first start", so a check on a production
state directory changes nothing in it. ``--no-llm`` skips loading the LLM (minutes for a large one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

from lada_client.common.preflight import Check, Status, package_versions, probe, writable_or_creatable
from lada_coordinator.config import CoordinatorConfig

__all__ = ["CERT_WARN_DAYS", "run_checks"]

#: packages ``serve`` imports; the LLM's (torch, transformers, peft) are checked only when it is loaded
REQUIRED_PACKAGES = ("fastapi", "uvicorn", "pydantic", "cryptography", "numpy", "lada-client")
LLM_PACKAGES = ("torch", "transformers", "peft")
CERT_WARN_DAYS = 14


def run_checks(
    config_path: Path,
    *,
    load_llm: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure_http: bool = False,
) -> list[Check]:
    """Every check for ``serve --config config_path`` with the same TLS flags."""
    checks = [probe("packages", lambda: _packages(load_llm))]
    try:
        config = CoordinatorConfig.load(config_path)
    except (ValueError, OSError) as exc:
        checks.append(Check("config", "fail", str(exc)))
        return checks + [
            Check(n, "skip", "needs a valid config")
            for n in ("state dir", "database", "public pool", "teacher", "tls", "port")
        ]
    checks.append(
        Check(
            "config",
            "ok",
            f"{config_path} ({config.rounds} rounds, allocation {config.allocation!r}, "
            f"min {config.min_clients} clients)",
        )
    )
    checks.append(probe("state dir", lambda: _state_dir(config.state_dir)))
    checks.append(probe("database", lambda: _database(config)))
    checks.append(probe("public pool", lambda: _public(config.public_data)))
    checks.append(probe("teacher", lambda: _teacher(config, load_llm)))
    if config.llm_server is not None:
        checks.append(probe("llm server", lambda: _engine(config)))
    checks.append(probe("tls", lambda: _tls(config, tls_cert, tls_key, insecure_http)))
    checks.append(probe("port", lambda: _port(config.host, config.port)))
    return checks


def _packages(load_llm: bool) -> tuple[Status, str]:
    found, missing = package_versions(REQUIRED_PACKAGES + (LLM_PACKAGES if load_llm else ()))
    v = sys.version_info
    python = f"python {v.major}.{v.minor}.{v.micro}"
    if missing:
        return "fail", f"missing: {', '.join(missing)} (pip install ./coordinator); found: {python}, {', '.join(found)}"
    return "ok", ", ".join([python, *found])


def _state_dir(state_dir: Path) -> tuple[Status, str]:
    ok, text = writable_or_creatable(state_dir)
    if not ok:
        return "fail", text
    key = state_dir / "coordinator.key"
    if key.exists():
        mode = key.stat().st_mode & 0o777
        if mode & 0o077:
            return "warn", f"{text}; {key} is readable by others (mode {mode:o}): chmod 600 it"
        return "ok", f"{text}; identity {key}"
    return "ok", f"{text}; identity made on first start"


def _database(config: CoordinatorConfig) -> tuple[Status, str]:
    if config.database_url is not None:
        return _postgres(config.database_url)
    db_path = config.db_path
    assert db_path is not None  # the config's own check: one of the two
    if not db_path.exists():
        ok, text = writable_or_creatable(db_path.parent)
        return ("ok", f"{db_path} made on first start") if ok else ("fail", text)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rounds = conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] if "rounds" in tables else 0
        devices = conn.execute("SELECT COUNT(*) FROM clients").fetchone()[0] if "clients" in tables else 0
    except sqlite3.DatabaseError as exc:
        return "fail", f"{db_path} is not a readable SQLite database ({exc})"
    finally:
        conn.close()
    if verdict != "ok":
        return "fail", f"{db_path}: integrity check says {verdict!r}"
    if not os.access(db_path, os.W_OK):
        return "fail", f"{db_path} is read-only for this user"
    return "ok", f"{db_path} ({rounds} rounds, {devices} devices so far)"


def _postgres(url: str) -> tuple[Status, str]:
    """The database answers, and this user may make the tables (``serve`` makes them on first start)."""
    try:
        import psycopg
    except ImportError:
        return "fail", "database_url needs psycopg: pip install './coordinator[postgres]'"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            where = f"{conn.info.user}@{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
            row = conn.execute(
                "SELECT to_regclass('rounds') IS NOT NULL, to_regclass('clients') IS NOT NULL"
            ).fetchone()
            assert row is not None
            if not (row[0] and row[1]):
                can = conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')").fetchone()
                if not (can and can[0]):
                    return "fail", f"postgresql {where}: this user may not create tables in the database's schema"
                return "ok", f"postgresql {where} (tables made on first start)"
            rounds = conn.execute("SELECT COUNT(*) FROM rounds").fetchone()
            devices = conn.execute("SELECT COUNT(*) FROM clients").fetchone()
    except psycopg.Error as exc:
        return "fail", f"cannot use the PostgreSQL database of database_url: {str(exc).strip()}"
    return (
        "ok",
        f"postgresql {where} ({rounds[0] if rounds else 0} rounds, {devices[0] if devices else 0} devices so far)",
    )


def _public(public_data: Path) -> tuple[Status, str]:
    from lada_client.data.federation import load_public

    pool = load_public(public_data)
    if not pool:
        return "fail", f"{public_data}: the public pool is empty"
    domains = sorted({s.domain for s in pool})
    return "ok", f"{len(pool)} public samples ({', '.join(domains)})"


def _teacher(config: CoordinatorConfig, load_llm: bool) -> tuple[Status, str]:
    parts: list[str] = []
    if config.teacher_paths is not None:
        from lada_coordinator.llm.paths import PathStore

        store = PathStore.open(config.teacher_paths)
        if not len(store):
            return "fail", f"teacher paths {config.teacher_paths} hold no records"
        parts.append(f"{len(store)} teacher paths in {config.teacher_paths}")
    if config.llm_dir is None:
        return "ok", "; ".join([*parts, "no LLM (train_llm is off)"])
    if not (config.llm_dir / "config.json").is_file():
        return "fail", f"llm_dir {config.llm_dir} is not a transformers checkpoint directory (no config.json)"
    if not load_llm:
        return "ok", "; ".join([*parts, f"LLM {config.llm_dir} (not loaded: --no-llm)"])
    from lada_coordinator.llm.host import LLMHost

    with tempfile.TemporaryDirectory(prefix="lada-check-") as tmp:
        host = LLMHost(
            config.llm_dir,
            Path(tmp) / "adapter",
            config.llm_lora,
            config.llm_distill.max_length,
            config.max_new_tokens,
            compute=config.llm_compute,
        )
        n = sum(p.numel() for p in host.model.parameters())
        assert host.trainer is not None
        where = f"{host.trainer.device}, {str(host.trainer.dtype).removeprefix('torch.')}"
    return "ok", "; ".join([*parts, f"LLM {config.llm_dir} loads ({n / 1e6:.1f} M parameters, {where})"])


def _engine(config: CoordinatorConfig) -> tuple[Status, str]:
    """What ``serve`` asks the engine at start-up, once and within 10 s: a check must not wait
    through the retries a round would grant."""
    from lada_coordinator.llm.serving import EngineError, OpenAICompletionsBackend

    assert config.llm_server is not None
    settings = dataclasses.replace(config.llm_server, retries=0, timeout_s=min(config.llm_server.timeout_s, 10.0))
    backend = OpenAICompletionsBackend(settings)
    try:
        backend.check()
    except EngineError as exc:
        return "fail", str(exc)
    finally:
        backend.close()
    return "ok", f"{backend.url} serves {settings.model!r} (prompt log-probs: {settings.prompt_logprobs})"


def _tls(config: CoordinatorConfig, cert: Path | None, key: Path | None, insecure_http: bool) -> tuple[Status, str]:
    from lada_coordinator.server.run import is_loopback

    if (cert is None) != (key is None):
        return "fail", "--tls-cert and --tls-key go together"
    if cert is None or key is None:
        if is_loopback(config.host):
            return "ok", f"plain http on loopback ({config.host})"
        if insecure_http:
            return "warn", f"plain http on {config.host} (--insecure-http): use TLS off loopback"
        generated = config.state_dir / "tls" / "cert.pem"
        if not generated.exists():
            return "ok", f"a self-signed certificate for {config.host} is made in {generated.parent} on first start"
        cert, key = generated, generated.with_name("key.pem")
    return _cert_pair(cert, key, config.host)


def _cert_pair(cert_path: Path, key_path: Path, host: str) -> tuple[Status, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        return "fail", f"{cert_path}: not a readable PEM certificate ({exc})"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return "fail", f"{key_path}: not a readable unencrypted PEM private key ({exc})"
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        return "fail", f"{key_path} is not the key of {cert_path}"
    now = dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        return "fail", f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if now < cert.not_valid_before_utc:
        return "fail", f"{cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d} (clock?)"
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    days = (cert.not_valid_after_utc - now).days
    text = f"{cert_path} for {', '.join(names) or 'no subject names'}, {days} days left"
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard and host not in names:
        return "warn", f"{text}; {host} is not among its names, so devices will refuse it"
    if days < CERT_WARN_DAYS:
        return "warn", f"{text}: renew it soon"
    return "ok", text


def _port(host: str, port: int) -> tuple[Status, str]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return "fail", f"cannot listen on {host}:{port} ({exc.strerror}; another coordinator running?)"
    return "ok", f"{host}:{port} is free"
