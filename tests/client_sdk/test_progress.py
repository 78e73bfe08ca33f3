"""Progress of a device's long steps: the reporters' output, and the real loops (ONNX scoring and
generation, LoRA steps, evaluation) reporting through a client's ``progress`` hook."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from lada_client.client import LadaClient
from lada_client.common.wire import Candidate
from lada_client.config import ClientConfig
from lada_client.data.federation import load_client
from lada_client.progress import LogProgress, TerminalProgress
from lada_client.scoring.features import learnability_features


def _events(record: list[tuple[str, int, int]], task: str) -> list[tuple[int, int]]:
    return [(d, t) for name, d, t in record if name == task]


def _whole(events: list[tuple[int, int]]) -> bool:
    """Starts at 0, never goes back, ends at its total."""
    done = [d for d, _ in events]
    return bool(events) and done[0] == 0 and done == sorted(done) and events[-1][0] == events[-1][1]


def test_log_progress_says_start_quarters_and_end(caplog):
    caplog.set_level(logging.INFO, logger="t")
    report = LogProgress(logging.getLogger("t"), "dev ")
    for done in range(0, 101, 5):
        report("scoring", done, 100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "dev scoring: 0/100" and lines[-1].startswith("dev scoring: 100/100 done in ")
    assert lines[1:-1] == ["dev scoring: 25/100", "dev scoring: 50/100", "dev scoring: 75/100"]


def test_terminal_progress_redraws_one_line_and_keeps_the_finished_one():
    out = io.StringIO()
    report = TerminalProgress(out)
    for done in (0, 2, 4):
        report("train", done, 4)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "4/4" in text.rsplit("\r", 1)[1] and "█" * TerminalProgress.WIDTH in text


def test_a_round_s_loops_report_through_the_client_hook(tiny_world, tmp_path: Path):
    record: list[tuple[str, int, int]] = []
    config = ClientConfig(
        coordinator_url="http://127.0.0.1:9",
        name="client0",
        state_dir=tmp_path / "state",
        data_dir=tiny_world["data"],
        scoring_model=tiny_world["client0"] / "onnx" / "model.onnx",
        base_model_dir=tiny_world["client0"] / "base",
        batch_size=8,
        eval_size=12,
    )
    with LadaClient(config, progress=lambda *event: record.append(event)) as client:
        data = load_client(tiny_world["data"], "client0")
        candidates = [
            Candidate(sample_id=s.sample_id, question=s.question, path=s.rationale, llm_logprob=-5.0, llm_tokens=10)
            for s in data.train[:20]
        ]
        learnability_features(client.slm, candidates, batch_size=8, progress=lambda *event: record.append(event))
        for task in ("score: paths", "score: answers", "score: greedy answers"):
            events = _events(record, task)
            assert _whole(events) and events[-1] == (20, 20), (task, events)
            assert len(events) == 1 + 3  # start, after the first two batches of 8, the end
        client.evaluate()
        assert _whole(_events(record, "evaluate")) and _events(record, "evaluate")[-1] == (12, 12)
        client.train_local(epochs=1, max_samples=16)
        steps = _events(record, "local training")
        assert _whole(steps) and steps[-1] == (2, 2)  # 16 samples, batches of 8 (DistillSettings.batch_size)
