"""Which saved runs of the real-model benchmark a resumed invocation reuses (``_common.same_run``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def quality_real(load_benchmark):
    return load_benchmark("quality_real")


def _signature(quality_real, method: str) -> dict:
    args = quality_real.parse_args([])
    models = {"student": Path("student.gguf"), "teacher": Path("teacher.gguf")}
    return quality_real.signature(
        quality_real.settings_for(args, quality_real.Sizes(), 1, quality_real.METHODS[method], models)
    )


def test_a_run_saved_before_a_setting_existed_is_reused_at_its_default(quality_real) -> None:
    lada = _signature(quality_real, "lada")
    assert quality_real.C.same_run(lada, lada)
    older = {k: v for k, v in lada.items() if k not in ("coverage", "llm_epochs")}
    older["slm_filter"] = {k: v for k, v in lada["slm_filter"].items() if k != "coverage_fraction"}
    assert quality_real.C.same_run(older, lada)  # saved before both existed: coverage 0, 1 LLM pass
    assert not quality_real.C.same_run(older, _signature(quality_real, "lada-cover"))  # coverage 0.25: a new run


def test_a_run_with_another_setting_is_not_reused(quality_real) -> None:
    lada = _signature(quality_real, "lada")
    assert not quality_real.C.same_run({**lada, "epochs": lada["epochs"] + 1}, lada)
    assert not quality_real.C.same_run({**lada, "slm_filter": {**lada["slm_filter"], "budget": 3}}, lada)
    assert not quality_real.C.same_run(_signature(quality_real, "random"), lada)
