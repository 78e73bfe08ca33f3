"""Durable coordinator state: enrollment tokens."""

from __future__ import annotations

import string
from pathlib import Path

from lada_coordinator.store import Store


def test_tokens_are_one_time_hex_safe_on_a_command_line(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    try:
        tokens = [store.issue_token() for _ in range(200)]
    finally:
        store.close()
    assert len(set(tokens)) == 200
    # a token starting with "-" would be parsed as an option by `lada-client run --token TOKEN`
    assert all(len(t) == 48 and set(t) <= set(string.hexdigits.lower()) for t in tokens)
