"""lada_coordinator.federation settings and the ``federation`` command's handling of bad input."""

from __future__ import annotations

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
    assert smollm2.student == locate_gguf() and smollm2.student.suffix == ".gguf"
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
    settings = _tiny(tiny_world, free_port)
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
