"""The warm start takes any step count: short runs used to divide by zero inside torch's OneCycleLR."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lada_client.common.reasoning import format_prompt, format_target  # noqa: E402
from lada_coordinator.simulation.domains import generate  # noqa: E402
from lada_coordinator.simulation.factory import ModelSpec, create_model  # noqa: E402
from lada_coordinator.simulation.pretrain import pretrain, warm_start_schedule  # noqa: E402
from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer  # noqa: E402

TINY = ModelSpec(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_positions=128)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("warm")
    samples = generate("add", 12, seed=0, id_prefix="warm")
    pairs = [(format_prompt(s.question), format_target(s.target)) for s in samples]
    save_tokenizer(build_tokenizer([p + c for p, c in pairs], vocab_size=300), root / "tokenizer")
    create_model(TINY, root / "tokenizer", root / "base")
    return root / "base", pairs


def _schedule_lrs(steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = warm_start_schedule(optimizer, steps, lr)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_short_warm_starts_train_and_save(tiny_model, steps: int) -> None:
    base, pairs = tiny_model
    before = (base / "model.safetensors").read_bytes()
    loss = pretrain(base, pairs, steps, batch_size=4, max_length=64)
    assert math.isfinite(loss) and loss > 0
    assert (base / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("steps", [1, 2, 3, 9, 10, 11, 20, 150])
def test_the_schedule_stays_within_its_bounds(steps: int) -> None:
    lr = 1e-2
    seen = _schedule_lrs(steps, lr)
    assert len(seen) == steps and all(math.isfinite(x) and 0 < x <= lr * (1 + 1e-9) for x in seen)
    assert max(seen) >= 0.9 * lr  # every run gets (near) the peak
    if steps * 0.1 <= 1:  # too short for a rising phase: start at the peak, then anneal
        assert seen[0] == pytest.approx(lr) and seen == sorted(seen, reverse=True)
        assert steps == 1 or seen[-1] < seen[0]


def test_longer_runs_keep_torch_one_cycle_schedule() -> None:
    steps, lr = 150, 1e-2
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    expected = []
    for _ in range(steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert _schedule_lrs(steps, lr) == pytest.approx(expected)


def test_zero_steps_leave_the_checkpoint_and_negative_ones_are_refused(tiny_model) -> None:
    base, pairs = tiny_model
    before = (base / "model.safetensors").read_bytes()
    assert math.isnan(pretrain(base, pairs, 0))
    assert (base / "model.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="warm-start steps must be an integer >= 0"):
        pretrain(base, pairs, -1)
