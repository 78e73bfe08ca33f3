"""Integer flags are usage errors naming the flag, never a traceback."""

from __future__ import annotations

import argparse

import pytest

from lada_client.common.argtypes import int_at_least


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--steps", type=int_at_least(0))
    p.add_argument("--rounds", type=int_at_least(1))
    return p


def test_values_at_or_above_the_minimum_parse():
    args = _parser().parse_args(["--steps", "0", "--rounds", "3"])
    assert (args.steps, args.rounds) == (0, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
        (["--steps", "-2"], "argument --steps: must be >= 0, got -2"),
        (["--steps", "ten"], "argument --steps: 'ten' is not an integer"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err
