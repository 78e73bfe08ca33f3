"""``lada-client check``: is this device ready to take part, and if not, what to fix.

Checks, in order: Python and the packages scoring needs; the config file; the private data shard;
the ONNX scoring graph (loaded and run once on one pair, so a graph that loads but cannot execute
on the chosen provider is caught here, not in round 1); whether the device can train, and why not
(the same check its enrollment declares); the state directory; enrollment; the coordinator (reachable,
TLS trusted, the key the token or the stored enrollment names) and the clock against the
coordinator's, which refuses envelopes from a clock too far off. Nothing here changes the device's
state: no identity is created, nothing is enrolled.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lada_client.common.preflight import Check, Status, package_versions, probe, writable_or_creatable

if TYPE_CHECKING:  # imported where used: a check must run even where a package is broken
    import httpx

    from lada_client.config import ClientConfig

__all__ = ["CLOCK_FAIL_S", "CLOCK_WARN_S", "REQUIRED_PACKAGES", "run_checks"]

#: what scoring and the protocol import; training needs more (see ``lada_client.capabilities``)
REQUIRED_PACKAGES = ("numpy", "onnxruntime", "tokenizers", "httpx", "cryptography", "pydantic")
#: the coordinator's default ``max_clock_skew_s``; past it every request is refused
CLOCK_FAIL_S = 600.0
CLOCK_WARN_S = 60.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def run_checks(
    config_path: Path, *, token: str | None = None, coordinator_url: str | None = None, timeout_s: float = 5.0
) -> list[Check]:
    """Every check for the device configured by ``config_path`` (overrides as on ``lada-client run``)."""
    checks = [probe("python", _python), probe("packages", _packages)]
    from lada_client.config import ClientConfig

    try:
        config = ClientConfig.load(config_path).with_overrides(token=token, coordinator_url=coordinator_url)
    except (ValueError, OSError) as exc:
        checks.append(Check("config", "fail", str(exc)))
        return checks + [
            Check(n, "skip", "needs a valid config")
            for n in ("data", "scoring model", "training", "state dir", "enrollment", "coordinator", "clock")
        ]
    checks.append(Check("config", "ok", f"{config_path} (client {config.name!r})"))
    checks.append(probe("data", lambda: _data(config)))
    checks.append(probe("scoring model", lambda: _scoring_model(config)))
    checks.append(probe("training", lambda: _training(config)))
    checks.append(probe("state dir", lambda: _state_dir(config.state_dir)))
    checks.append(probe("enrollment", lambda: _enrollment(config)))
    reach, server_time = _coordinator(config, timeout_s)
    checks.append(reach)
    checks.append(
        probe("clock", lambda: _clock(server_time))
        if server_time is not None
        else Check("clock", "skip", "needs the coordinator's reply")
    )
    return checks


# ---------------------------------------------------------------------------------- probes
def _python() -> tuple[Status, str]:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    return ("ok", text) if v >= (3, 10) else ("fail", f"{text}; lada-client needs Python 3.10 or newer")


def _packages() -> tuple[Status, str]:
    found, missing = package_versions(REQUIRED_PACKAGES)
    if missing:
        return "fail", f"missing: {', '.join(missing)} (pip install ./client_sdk); found: {', '.join(found)}"
    return "ok", ", ".join(found)


def _data(config: ClientConfig) -> tuple[Status, str]:
    from lada_client.data.federation import load_client

    data = load_client(config.data_dir, config.name)
    if not data.train:
        return "fail", f"{config.data_dir}: client {config.name!r} has no private training samples"
    return "ok", f"{len(data.train)} private, {len(data.test)} test samples (domain {data.domain!r})"


def _scoring_model(config: ClientConfig) -> tuple[Status, str]:
    from lada_client.scoring.onnx_slm import ModelLoadError, OnnxSLM

    try:
        slm = OnnxSLM(config.scoring_model, max_length=64, intra_op_threads=config.threads)
        lp = slm.completion_logprobs(["What is 1 + 1?"], ["1 + 1 = 2."])[0]
    except ModelLoadError as exc:
        return "fail", str(exc)
    size = config.scoring_model.stat().st_size / 2**20
    cache = "KV cache" if slm.kv_cache else "no KV cache (generation re-runs the prefix)"
    return "ok", (
        f"{config.scoring_model} ({size:.0f} MiB, {', '.join(slm.providers)}, {cache}; "
        f"one pair scored: mean log p {float(lp.mean()):.2f})"
    )


def _training(config: ClientConfig) -> tuple[Status, str]:
    support = config.training_support()
    if support:
        return "ok", f"can train (backend {support.backend!r})"
    return "warn", f"score-only: {support.reason}"


def _state_dir(state_dir: Path) -> tuple[Status, str]:
    ok, text = writable_or_creatable(state_dir)
    return ("ok" if ok else "fail"), text


def _enrollment(config: ClientConfig) -> tuple[Status, str]:
    record = config.state_dir / "enrollment.json"
    if record.exists():
        saved = json.loads(record.read_text())
        return "ok", f"enrolled as {saved.get('client_id')!r} ({record})"
    if config.token:
        from lada_client.common.enrollment import EnrollmentToken

        parsed = EnrollmentToken.parse(config.token)
        return "ok", f"not enrolled yet; will enroll with token {parsed.token_id}"
    return "fail", 'not enrolled and no enrollment token (--token or "token" in the config)'


def _coordinator(config: ClientConfig, timeout_s: float) -> tuple[Check, float | None]:
    """Reachability, TLS and the coordinator's key in one request pair; also its clock (``Date``)."""
    import httpx

    from lada_client.common.crypto import PublicIdentity
    from lada_client.common.wire import ROUTES

    url = config.coordinator_url
    parts = urlsplit(url)
    verify: str | bool = str(config.ca_cert) if config.ca_cert else True
    trust = f"TLS verified against {config.ca_cert}" if config.ca_cert else "TLS verified against the system store"
    try:
        with httpx.Client(base_url=url, verify=verify, timeout=timeout_s) as http:
            health = http.get(ROUTES["health"])
            keys = http.get(ROUTES["identity"])
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
            hint = (
                "set ca_cert to the coordinator's certificate"
                if not config.ca_cert
                else f"{config.ca_cert} does not sign it"
            )
            return Check("coordinator", "fail", f"{url}: TLS certificate not trusted ({hint})"), None
        return Check("coordinator", "fail", f"{url}: cannot connect ({exc})"), None
    except httpx.TimeoutException:
        return Check("coordinator", "fail", f"{url}: no answer within {timeout_s:g}s"), None
    except httpx.HTTPError as exc:
        return Check("coordinator", "fail", f"{url}: {type(exc).__name__}: {exc}"), None
    server_time = _date_header(health)
    if health.status_code != 200 or keys.status_code != 200:
        return Check(
            "coordinator",
            "fail",
            f"{url} answers but is not a LaDa coordinator "
            f"({ROUTES['health']} {health.status_code}, {ROUTES['identity']} {keys.status_code})",
        ), server_time
    body = keys.json()
    fingerprint = PublicIdentity.from_b64(body["sign_key"], body["kex_key"]).fingerprint()
    record = config.state_dir / "enrollment.json"
    if record.exists():
        saved = json.loads(record.read_text())
        expected = PublicIdentity.from_b64(saved["sign_key"], saved["kex_key"]).fingerprint()
        if expected != fingerprint:
            return Check(
                "coordinator",
                "fail",
                f"{url} holds key {fingerprint[:16]}…, not the {expected[:16]}… this "
                "device enrolled with: wrong URL, or the coordinator's keys changed",
            ), server_time
    elif config.token:
        from lada_client.common.enrollment import EnrollmentToken

        parsed = EnrollmentToken.parse(config.token)
        if not parsed.names(fingerprint):
            return Check(
                "coordinator",
                "fail",
                f"{url} holds key {fingerprint[:16]}…, not the "
                f"{parsed.fingerprint[:16]}… the token names: wrong URL or wrong token",
            ), server_time
    if parts.scheme == "https":
        transport = trust
    elif parts.hostname in _LOOPBACK:
        transport = "plain http on loopback"
    else:
        return Check(
            "coordinator",
            "warn",
            f"{url} reachable, key {fingerprint[:16]}…; plain http off loopback: "
            "payloads stay sealed, but use https so routing metadata is not visible",
        ), server_time
    return Check("coordinator", "ok", f"{url} reachable, key {fingerprint[:16]}…, {transport}"), server_time


def _date_header(response: httpx.Response) -> float | None:
    value = response.headers.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _clock(server_time: float) -> tuple[Status, str]:
    # ``Date`` has one-second resolution, so skews under a couple of seconds are noise
    skew = time.time() - server_time
    text = f"{skew:+.0f}s against the coordinator"
    if abs(skew) > CLOCK_FAIL_S:
        return (
            "fail",
            f"{text}; the coordinator refuses envelopes past ±{CLOCK_FAIL_S:.0f}s by default: set the clock (NTP)",
        )
    if abs(skew) > CLOCK_WARN_S:
        return "warn", f"{text}; consider NTP"
    return "ok", text
