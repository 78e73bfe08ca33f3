"""Connection bounds and transport security defaults of the coordinator's server."""

from __future__ import annotations

import logging
import stat

import pytest

from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.server.limits import RateLimiter
from lada_coordinator.server.run import is_loopback, tls_material


def test_rate_limiter_refuses_after_a_burst_and_refills():
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1", now=0.0) == 0
        limiter.charge("10.0.0.1", now=0.0)
    assert limiter.retry_after("10.0.0.1", now=0.0) == pytest.approx(0.5)
    assert limiter.retry_after("10.0.0.2", now=0.0) == 0  # per address
    assert limiter.retry_after("10.0.0.1", now=0.6) == 0  # one token back after 1/rate seconds
    small = RateLimiter(rate=1.0, burst=1, max_keys=100)
    for i in range(1000):
        small.charge(f"10.1.{i // 256}.{i % 256}", now=0.0)
    assert len(small._buckets) == 100  # a flood from many addresses costs bounded memory


def _config(tmp_path, host: str) -> CoordinatorConfig:
    return CoordinatorConfig(
        db_path=tmp_path / "c.sqlite", state_dir=tmp_path / "state", llm_dir=tmp_path, public_data=tmp_path, host=host
    )


def test_tls_is_on_unless_loopback_or_explicitly_off(tmp_path, caplog):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert tls_material(_config(tmp_path, "127.0.0.1"), None, None, False) == (None, None)
    cert, key = tls_material(_config(tmp_path, "10.1.2.3"), None, None, False)
    assert cert == tmp_path / "state" / "tls" / "cert.pem" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tls_material(_config(tmp_path, "10.1.2.3"), None, None, False) == (cert, key)  # made once, then reused
    with caplog.at_level(logging.WARNING):
        assert tls_material(_config(tmp_path, "0.0.0.0"), None, None, True) == (None, None)
    assert "plain http" in caplog.text
    with pytest.raises(ValueError, match="go together"):
        tls_material(_config(tmp_path, "10.1.2.3"), cert, None, False)


def test_operator_cli_issues_lists_and_revokes_tokens_and_devices(tmp_path, capsys):
    import json

    from lada_client.common.wire import Capabilities
    from lada_coordinator.cli import main
    from lada_coordinator.store import ClientRecord, Store

    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "db_path": str(tmp_path / "c.sqlite"),
                "state_dir": str(tmp_path / "state"),
                "llm_dir": str(tmp_path),
                "public_data": str(tmp_path),
            }
        )
    )
    assert main(["issue-token", "--config", str(cfg), "--count", "2", "--ttl-hours", "1", "--group", "ward-7"]) == 0
    tokens = capsys.readouterr().out.split()
    assert len(tokens) == 2 and all(t.startswith("lada1-") for t in tokens)
    assert main(["tokens", "--config", str(cfg)]) == 0
    header, *listing = capsys.readouterr().out.splitlines()  # captured, so a plain table: header, one row each
    assert header.split() == ["token", "id", "group", "state"]
    assert len(listing) == 2 and all("ward-7" in line and "open, 1.0 h left" in line for line in listing)
    token_id = listing[0].split()[0]
    assert main(["tokens", "--config", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["token_id"] for t in listed] == [line.split()[0] for line in listing]
    assert all(t["group"] == "ward-7" and t["used_by"] is None and not t["revoked"] for t in listed)
    assert main(["revoke-token", "--config", str(cfg), token_id]) == 0 and "revoked 1" in capsys.readouterr().out
    assert main(["revoke-token", "--config", str(cfg), token_id]) == 2  # nothing left to revoke: a clear error
    assert "no open token" in capsys.readouterr().err
    assert main(["issue-token", "--config", str(cfg), "--group", "no spaces"]) == 2
    store = Store(tmp_path / "c.sqlite")
    store.add_client(ClientRecord("phone-1", "phone", "s", "k", "", "", Capabilities(), 0, 0, 0))
    store.close()
    assert main(["revoke", "--config", str(cfg), "phone"]) == 0
    assert main(["revoke", "--config", str(cfg), "phone"]) == 2
