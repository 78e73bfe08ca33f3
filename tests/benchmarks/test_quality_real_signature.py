"""Which saved runs of the real-model benchmark a resumed invocation reuses (``_common.same_run``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def quality_real(load_benchmark):
    return load_benchmark("quality_real")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    where = tmp_path_factory.mktemp("models")
    for name in ("student.gguf", "teacher.gguf"):
        (where / name).write_bytes(b"GGUF")  # settings check that a student exists, nothing more
    return {"students": (where / "student.gguf",), "teacher": where / "teacher.gguf"}


def _signature(quality_real, models: dict, method: str) -> dict:
    args = quality_real.parse_args([])
    return quality_real.signature(
        quality_real.settings_for(args, quality_real.Sizes(), 1, quality_real.METHODS[method], models)
    )


def test_a_run_saved_before_a_setting_existed_is_reused_at_its_default(quality_real, models) -> None:
    lada = _signature(quality_real, models, "lada")
    assert quality_real.C.same_run(lada, lada)
    older = {k: v for k, v in lada.items() if k not in ("coverage", "llm_epochs")}
    older["slm_filter"] = {k: v for k, v in lada["slm_filter"].items() if k != "coverage_fraction"}
    assert quality_real.C.same_run(older, lada)  # saved before both existed: coverage 0, 1 LLM pass
    assert not quality_real.C.same_run(
        older, _signature(quality_real, models, "lada-cover")
    )  # coverage 0.25: a new run


def test_a_run_with_another_setting_is_not_reused(quality_real, models) -> None:
    lada = _signature(quality_real, models, "lada")
    assert not quality_real.C.same_run({**lada, "epochs": lada["epochs"] + 1}, lada)
    assert not quality_real.C.same_run({**lada, "slm_filter": {**lada["slm_filter"], "budget": 3}}, lada)
    assert not quality_real.C.same_run(_signature(quality_real, models, "random"), lada)


def test_one_student_is_recorded_as_runs_always_recorded_it_and_a_mixed_fleet_is_another_run(
    quality_real, models
) -> None:
    lada = _signature(quality_real, models, "lada")
    assert lada["student"] == str(models["students"][0]) and "students" not in lada
    mixed = {**models, "students": (*models["students"], models["teacher"])}
    args = quality_real.parse_args([])
    fleet = quality_real.signature(
        quality_real.settings_for(args, quality_real.Sizes(), 1, quality_real.METHODS["lada"], mixed)
    )
    assert fleet["students"] == [str(p) for p in mixed["students"]] and "student" not in fleet
    assert not quality_real.C.same_run(fleet, lada)


def test_the_ablation_table_pairs_each_switch_by_seed_and_leaves_out_what_did_not_run(quality_real) -> None:
    summary = {
        "seeds": [3, 4, 5],
        "methods": {
            "lada-cover": {"final_mean_accuracy": [0.20, 0.15, None]},
            "sft": {"final_mean_accuracy": [0.10, 0.20, 0.30]},
            "lada": {"final_mean_accuracy": [0.12]},
            "lada-ppl": {"final_mean_accuracy": [0.02]},
        },
    }
    lines = quality_real.ablation_lines(summary)
    rows = [line for line in lines if line.startswith("| lada")]
    assert rows == [
        "| lada-cover − sft | the contrastive term L_CD (α = 0.5 against 0), same allocation rule "
        "| +0.100, -0.050 (seeds 3, 4) | +0.025 ± 0.106 |",  # seed 5 of lada-cover missing: not paired
        "| lada-cover − lada | the coverage share (0.25 against 0) | +0.080 (seed 3) | +0.080 (one seed) |",
        "| lada − lada-ppl | the reward on the device's own task against the method's PPL drop "
        "| +0.100 (seed 3) | +0.100 (one seed) |",
    ]
    assert quality_real.ablation_lines({"methods": {"lada": {"final_mean_accuracy": [0.1]}}}) == []


def test_targets_are_judged_on_the_seeds_both_methods_ran_and_need_two(quality_real) -> None:
    """A resumable benchmark reports while runs are missing: a target compares the same seeds on
    both sides, and one seed cannot show a difference larger than the seed-to-seed spread."""
    summary = {
        "seeds": [6, 7, 8],
        "methods": {
            "random": {"final_mean_accuracy": [0.10, 0.12, 0.20], "own_domain_share": [0.25, 0.25, 0.90]},
            "local": {"final_mean_accuracy": [0.05, None, None], "own_domain_share": [None, None, None]},
            "sft": {"final_mean_accuracy": [0.20, 0.18, None], "own_domain_share": [0.50, 0.60, None]},
        },
    }
    rows = [line for line in quality_real.target_lines(summary) if line.startswith("| sft") or "share" in line]
    assert rows == [
        "| sft − random | +0.100, +0.060 (seeds 6, 7) | +0.080 ± 0.028 | ≥ +0.05 and > std | yes |",
        "| sft − local | +0.150 (seed 6) | +0.150 (one seed) | ≥ +0.10 and > std | — (needs 2 seeds) |",
        "| own-family share sft / random | 0.55 / 0.25 (seeds 6, 7) | ratio 2.20 | ≥ 2 | yes |",
    ]


def test_methods_are_set_side_by_side_on_the_seeds_every_method_ran(quality_real) -> None:
    complete = {"local": {"final_mean_accuracy": [0.1, 0.1, 0.1]}, "sft": {"final_mean_accuracy": [0.2, None, 0.2]}}
    assert quality_real.side_by_side_seeds({"seeds": [6, 7, 8], "methods": complete}) == [6, 8]
    not_started = {**complete, "lada-cover": {"final_mean_accuracy": [None, None, None]}}  # leaves no seed out
    assert quality_real.side_by_side_seeds({"seeds": [6, 7, 8], "methods": not_started}) == [6, 8]
    none_complete = {"local": {"final_mean_accuracy": [0.1, None]}, "sft": {"final_mean_accuracy": [None, 0.2]}}
    assert quality_real.side_by_side_seeds({"seeds": [6, 7], "methods": none_complete}) == [6, 7]
