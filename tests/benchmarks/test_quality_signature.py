"""Saved runs of the toy benchmark stay reusable as settings are added (``_common.same_run``): a
report of committed results is rebuilt from them, not re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SAVED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality_llm_direction" / "mkt"


@pytest.fixture(scope="module")
def quality(load_benchmark):
    return load_benchmark("quality")


@pytest.mark.parametrize("method", ["random", "lada-cover"])
def test_committed_runs_match_the_settings_they_were_made_with(quality, method) -> None:
    """These runs predate ``students``, ``llm_alpha`` and ``llm_rehearsal``; the invocation in
    their report's header must still find them (and must not with another LLM setting)."""
    flags = ["--offer-questions", "192", "--llm-epochs", "4", "--methods", "random", "lada-cover"]
    saved = json.loads((SAVED / method / "seed0" / "run.json").read_text())["settings"]

    def expected(*more: str) -> dict:
        args = quality.parse_args([*flags, *more])
        sizes, _, _ = quality.resolve(args)
        return quality.signature(quality.settings_for(sizes, 0, "mkt", quality.METHODS[method], args, Path(".")))

    assert quality.C.same_run(saved, expected())
    assert not quality.C.same_run(saved, expected("--llm-rehearsal", "1"))
    assert not quality.C.same_run(saved, expected("--llm-alpha", "0"))
