"""lada_coordinator.federation settings and the ``federation`` command's handling of bad input."""

from __future__ import annotations

import pytest

from lada_coordinator.cli import main
from lada_coordinator.federation import FederationSettings


def test_negative_epochs_are_refused_before_anything_is_built(tmp_path, capsys):
    with pytest.raises(ValueError, match="epochs"):
        FederationSettings(workdir=tmp_path, epochs=-1)
    assert main(["federation", "--workdir", str(tmp_path / "fed"), "--epochs", "-1"]) == 2
    assert "epochs must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--slm-warmup-steps", "-1", "must be >= 0, got -1"),
    ("--llm-warmup-steps", "ten", "'ten' is not an integer"),
])
def test_bad_warm_start_step_counts_are_usage_errors(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["federation", "--workdir", str(tmp_path / "fed"), flag, value])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()
