"""lada_coordinator.federation settings and the ``federation`` command's handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lada_coordinator.cli import build_parser, main
from lada_coordinator.federation import PRESETS, FederationSettings, defaults, settings_from


def test_negative_epochs_are_refused_before_anything_is_built(tmp_path, capsys):
    with pytest.raises(ValueError, match="epochs"):
        FederationSettings(workdir=tmp_path, epochs=-1)
    with pytest.raises(SystemExit) as exited:
        main(["federation", "--workdir", str(tmp_path / "fed"), "--epochs", "-1"])
    assert exited.value.code == 2 and "--epochs: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()


def _federation_args(*argv: str) -> dict:
    args = build_parser().parse_args(["federation", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("command", "func", "preset", "verbose") and v is not None}


def test_flags_default_to_the_settings_and_say_so_in_the_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps its help at the terminal width, hyphens too
    assert _federation_args() == {}  # nothing given: every value is FederationSettings' own
    assert settings_from() == FederationSettings()
    given = _federation_args("--rounds", "5", "--slm-presets", "slm-small", "--no-tls", "--timeout", "60")
    assert given == {"rounds": 5, "slm_presets": ("slm-small",), "tls": False, "timeout_s": 60.0}
    assert settings_from(**given) == FederationSettings(rounds=5, slm_presets=("slm-small",), tls=False, timeout_s=60.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["federation", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, value in defaults().items():
        if name in ("verbose", "timeout_s") or value in (None, ()):
            continue
        flag = "--" + name.replace("_", "-")
        shown = ",".join(value) if isinstance(value, tuple) else value
        assert f"{flag}" in help_text and f"(default: {shown})" in help_text, (flag, shown)


def test_a_preset_fills_what_is_not_given_and_a_flag_beats_it():
    from lada_client.models.smollm2 import locate_gguf

    preset = PRESETS["smollm2"].settings()
    smollm2 = settings_from("smollm2")
    assert smollm2.students == (locate_gguf(),) and smollm2.students[0].suffix == ".gguf"
    assert (smollm2.rounds, smollm2.budget, smollm2.candidates) == (
        preset["rounds"],
        preset["budget"],
        preset["candidates"],
    )
    assert smollm2.clients == FederationSettings().clients  # not in the preset: the default
    assert settings_from("smollm2", rounds=4).rounds == 4
    with pytest.raises(ValueError, match="unknown preset"):
        settings_from("gpt-5")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["federation", "--preset", "gpt-5"])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--slm-warmup-steps", "-1", "must be >= 0, got -1"),
        ("--llm-warmup-steps", "ten", "'ten' is not an integer"),
    ],
)
def test_bad_warm_start_step_counts_are_usage_errors(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["federation", "--workdir", str(tmp_path / "fed"), flag, value])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()


def _tiny(tiny_world, port: int) -> FederationSettings:
    """The settings tiny_world was built with (so nothing is rebuilt), for one short round."""
    return FederationSettings(
        workdir=tiny_world["workdir"],
        clients=3,
        rounds=1,
        candidates=16,
        budget=6,
        port=port,
        n_train=40,
        n_test=16,
        n_public=160,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
        offer_questions=4,
        timeout_s=300,
    )


def _run_watched(settings: FederationSettings, **overrides) -> tuple[int, list[str], list[str]]:
    """run_federation drawn by the console reporter into two files (stdout, stderr): its lines."""
    import io

    from rich.console import Console

    from lada_coordinator.console import ConsoleReporter
    from lada_coordinator.federation import run_federation

    out, err = io.StringIO(), io.StringIO()
    with ConsoleReporter(Console(file=out, width=160), Console(file=err, width=160)) as reporter:
        code = run_federation(settings, reporter=reporter, **overrides)
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


@pytest.mark.e2e
def test_a_failing_client_ends_the_run_with_its_name_and_its_log_tail(tiny_world, free_port, tmp_path):
    settings = replace(_tiny(tiny_world, free_port), llm_alpha=0.0, llm_rehearsal=0.5)
    missing = tmp_path / "no-such-model.onnx"
    code, out, err = _run_watched(settings, client_overrides={"client1": {"scoring_model": str(missing)}})
    log = settings.workdir / "run" / "logs" / "client1.log"
    assert code == 1
    assert err[0] == "✗ client1 exited with code 2", err
    tail = log.read_text().splitlines()[-15:]
    assert err[1] == f"  last {f'{len(tail)} lines' if len(tail) > 1 else 'line'} of {log}:"
    assert err[2:] == [f"    {line}" for line in tail]
    assert "lada-client: error:" in err[-1] and str(missing) in err[-1]  # the cause, verbatim, last
    assert [line.split()[1] for line in out if line.startswith("✓ ")][-1] == "processes"  # set-up went through
    written = json.loads((settings.workdir / "run" / "coordinator.json").read_text())
    assert written["llm_distill"]["epochs"] == settings.llm_epochs  # the LLM's passes, as set
    assert written["llm_distill"]["alpha"] == 0.0 and written["llm_rehearsal"] == 0.5  # its loss and rehearsal


@pytest.mark.e2e
def test_a_coordinator_that_does_not_start_is_named_with_its_log_tail(tiny_world, free_port):
    settings = _tiny(tiny_world, free_port)
    code, out, err = _run_watched(settings, coordinator_overrides={"rounds": 0})
    assert code == 1
    assert err[0] == "✗ coordinator exited with code 2 during start-up", err
    assert err[1].startswith("  last ") and err[1].endswith("coordinator.log:")
    assert err[-1].startswith("    lada-coordinator: error: coordinator config ")  # names the file ...
    assert err[-1].endswith("coordinator.json: rounds: must be >= 1, got 0 (an integer)")  # ... and the field
    assert out[-1].startswith("✗ processes")  # the stage that failed is marked, nothing is left half-drawn


def test_llm_unseen_must_be_a_domain_of_the_chosen_toy_set(tmp_path, capsys):
    with pytest.raises(ValueError, match="toy_domains must be one of"):
        FederationSettings(workdir=tmp_path, toy_domains="geometry")
    assert FederationSettings(workdir=tmp_path, toy_domains="rules", llm_unseen=("largest",)).llm_unseen == ("largest",)
    with pytest.raises(ValueError, match="no effect with --families"):
        FederationSettings(workdir=tmp_path, families=("chain_sum",), llm_unseen=("add",))
    code = main(["federation", "--workdir", str(tmp_path / "fed"), "--toy-domains", "rules", "--llm-unseen", "mul"])
    err = capsys.readouterr().err
    assert code == 2 and "llm_unseen: mul not in the 'rules' domains" in err
    assert "Traceback" not in err and not (tmp_path / "fed").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--alpha", "-1", "must be >= 0, got -1.0"),
        ("--dp-noise", "-1", "must be >= 0, got -1.0"),
        ("--timeout", "-5", "must be > 0, got -5.0"),
        ("--timeout", "nan", "must be a finite number, got nan"),
        ("--port", "70000", "must be <= 65535, got 70000"),
        ("--features", "slm_path_nll,bogus", "[1]: must be 'slm_path_nll'"),
        ("--slm-presets", "slm-small,bogus", "[1]: must be a model preset (llm-tiny, slm-large"),
        ("--reward", "bogus", "invalid choice: 'bogus'"),
    ],
)
def test_out_of_range_values_are_usage_errors_naming_the_flag(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["federation", "--workdir", str(tmp_path / "fed"), flag, value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: argument {flag}: {message}" in err, err
    assert "Traceback" not in err and not (tmp_path / "fed").exists()


def test_every_field_is_checked_on_construction(tmp_path):
    from lada_client.common.config_io import ConfigError

    for bad, field in [
        ({"alpha": -1}, "alpha"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"port": 70000}, "port"),
        ({"allocation": "greedy"}, "allocation"),
        ({"host_framework": "fedavg"}, "host_framework"),
        ({"reward": "accuracy"}, "reward"),
        ({"credit": "sample"}, "credit"),
        ({"private_sft": "none"}, "private_sft"),
        ({"features": ("bogus",)}, "features[0]"),
        ({"slm_presets": ()}, "slm_presets"),
        ({"clients": "3"}, "clients"),  # strict, as every config: a string is not a count
        ({"roundz": 3}, "roundz"),
    ]:
        with pytest.raises(ConfigError) as refused:
            FederationSettings(workdir=tmp_path, **bad)
        assert field in [name for name, _ in refused.value.problems], (bad, refused.value.problems)
    # what the benchmarks pass: lists for tuples, integers for numbers, strings for paths
    given = FederationSettings(workdir=str(tmp_path), alpha=0, timeout_s=60, slm_presets=["slm-small"], port=0)
    assert (given.workdir, given.alpha, given.slm_presets, given.port) == (tmp_path, 0.0, ("slm-small",), 0)


def test_settings_passed_on_to_other_configs_take_their_defaults_and_choices():
    import typing

    from lada_client.config import ClientConfig, DistillSettings, RewardSettings
    from lada_client.privacy.dp import DPSettings
    from lada_coordinator.config import LLM_DISTILL, SLM_FILTER, AllocationMode, HostFramework
    from lada_coordinator.server.run import LLM_EVAL_SIZE

    client = ClientConfig(coordinator_url="http://x", name="c", state_dir=".", data_dir=".", scoring_model=".")
    s = FederationSettings()
    assert (s.alpha, s.epochs) == (DistillSettings().alpha, DistillSettings().epochs)
    assert (s.reward, s.credit) == (RewardSettings().kind, RewardSettings().credit)
    assert (s.private_sft, s.eval_size, s.max_new_tokens) == (
        client.private_sft,
        client.eval_size,
        client.max_new_tokens,
    )
    assert s.dp_noise == DPSettings().noise_multiplier and LLM_EVAL_SIZE == client.eval_size
    assert s.llm_epochs == LLM_DISTILL.epochs and s.coverage == SLM_FILTER.coverage_fraction == 0.25
    for flag, literal in [
        ("--allocation", AllocationMode),
        ("--host-framework", HostFramework),
        ("--reward", typing.get_type_hints(RewardSettings)["kind"]),
        ("--credit", typing.get_type_hints(RewardSettings)["credit"]),
        ("--private-sft", typing.get_type_hints(ClientConfig)["private_sft"]),
    ]:
        for value in typing.get_args(literal):  # every choice of the config, and (as above) no other
            assert _federation_args(flag, value) == {flag[2:].replace("-", "_"): value}
    for value in typing.get_args(AllocationMode):
        assert build_parser().parse_args(["serve", "--config", "c.json", "--allocation", value]).allocation == value


def _refused_workdir(workdir, capsys) -> str:
    code = main(["federation", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lada-coordinator: error: --workdir {workdir}: "), err
    return err


def test_a_workdir_that_cannot_be_one_is_a_one_line_error(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    assert "not a directory" in _refused_workdir(file, capsys)
    assert "Not a directory" in _refused_workdir(file / "below", capsys)
    if Path("/sys").is_dir():  # a place nobody may create directories or write files in
        _refused_workdir(Path("/sys/lada-federation"), capsys)
        _refused_workdir(Path("/sys"), capsys)


def test_the_installed_command_refuses_a_bad_workdir_without_a_traceback(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "lada_coordinator.cli", "federation", "--workdir", str(file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"lada-coordinator: error: --workdir {file}: not a directory"


def test_a_mixed_fleet_imports_each_student_once_and_gives_them_to_the_clients_in_turn(tiny_world, tmp_path):
    """``--students a,b``: client0 and client2 run ``a``, client1 ``b``, each imported once (a
    checkpoint of its own, an ONNX scorer of its own, sized as its source)."""
    pytest.importorskip("optimum.exporters.onnx")
    from lada_coordinator.federation import prepare

    large, small = tiny_world["client0"] / "base", tiny_world["client2"] / "base"
    given = _federation_args("--students", f"{large},{small}")
    assert given == {"students": (large, small)}
    settings = FederationSettings(
        workdir=tmp_path / "fed", n_train=40, n_test=16, n_public=160, llm_warmup_steps=4, **given
    )
    paths = prepare(settings)
    work = settings.workdir / "models"
    assert [paths[f"client{i}"] for i in range(3)] == [work / "student-0", work / "student-1", work / "student-0"]
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("student")) == ["student-0", "student-1"]
    hidden = [
        json.loads((work / d / "checkpoint" / "config.json").read_text())["hidden_size"]
        for d in ("student-0", "student-1")
    ]
    assert hidden == [json.loads((s / "config.json").read_text())["hidden_size"] for s in (large, small)]
    assert hidden[0] != hidden[1] and all(
        (work / d / "onnx" / "model.onnx").is_file() for d in ("student-0", "student-1")
    )
    with pytest.raises(ValueError, match="students"):
        FederationSettings(workdir=tmp_path / "x", students=(tmp_path / "missing.gguf",))
