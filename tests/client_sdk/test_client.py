"""LadaClient: the trainer is built in the background and handed over (or its error raised) at first use."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from lada_client.client import LadaClient
from lada_client.config import ClientConfig


def _config(world: dict[str, Path], tmp_path: Path, base_model_dir: Path) -> ClientConfig:
    return ClientConfig(
        coordinator_url="http://127.0.0.1:9",  # never contacted by these tests
        name="client0",
        state_dir=tmp_path / "state",
        data_dir=world["data"],
        scoring_model=world["client0"] / "onnx" / "model.onnx",
        base_model_dir=base_model_dir,
    )


def test_trainer_is_loaded_in_a_background_thread_and_reused(tiny_world, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import lada_client.training.trainers as trainers

    loaded_in: list[str] = []
    real = trainers.trainer_for

    def recording(config, adapter_dir):
        loaded_in.append(threading.current_thread().name)
        return real(config, adapter_dir)

    monkeypatch.setattr(trainers, "trainer_for", recording)
    with LadaClient(_config(tiny_world, tmp_path, tiny_world["client0"] / "base")) as client:
        future = client._start_loading_trainer()
        trainer = client.trainer
        assert trainer is future.result() and client.trainer is trainer
        assert loaded_in == ["client0-trainer-load"]  # built once, off the caller's thread
        assert trainer.adapter_vector().size > 0


def test_a_trainer_that_fails_to_load_raises_at_first_use(tiny_world, tmp_path):
    pytest.importorskip("torch")
    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_world["client0"] / "base", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with LadaClient(_config(tiny_world, tmp_path, broken)) as client:  # construction reads only config.json
        future = client._start_loading_trainer()
        with pytest.raises(Exception) as raised:
            _ = client.trainer
        assert raised.value is future.exception()  # the loader's own error, raised in the caller's thread
        assert client._trainer is None and client._trainer_future is None  # the next use tries again


def test_the_scoring_session_takes_the_memory_settings_and_is_released_before_a_reload(tiny_world, tmp_path):
    import dataclasses
    import weakref

    alive_at_load: list[bool] = []

    class Recording(LadaClient):  # the embedders' hook, observed
        def load_slm(self, path):
            alive_at_load.append(old is not None and old() is not None)
            return super().load_slm(path)

    old = None
    config = _config(tiny_world, tmp_path, tiny_world["client0"] / "base")
    with Recording(config) as client:
        assert client.slm.session.get_session_options().enable_cpu_mem_arena is False  # the default
        assert client.slm.logits_budget_bytes == config.logits_budget_mib << 20
        old = weakref.ref(client.slm)
        client._reload_slm(config.scoring_model)
        assert alive_at_load == [False, False] and old() is None  # released before the new one loads
    with LadaClient(dataclasses.replace(config, cpu_mem_arena=True, logits_budget_mib=64)) as client:
        assert client.slm.session.get_session_options().enable_cpu_mem_arena is True
        assert client.slm.logits_budget_bytes == 64 << 20


def test_step_waits_runs_once_and_leaves_a_round_it_was_set_aside_in(
    tiny_world, tmp_path, free_port, serve_coordinator, issue
):
    """``LadaClient.step`` against a real coordinator (rounds opened by hand, no engine): it only
    waits while no round collects features, never runs a round it has done, and when the
    coordinator sets it aside (409) it leaves that round for good instead of failing."""
    from lada_client.common.wire import Candidate, Phase, RoundInfo
    from lada_coordinator.config import CoordinatorConfig

    coordinator = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "coordinator",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        port=free_port,
        rounds=3,
    )
    with serve_coordinator(coordinator) as (url, store):
        config = _config(tiny_world, tmp_path, tiny_world["client0"] / "base").with_overrides(
            coordinator_url=url, token=issue(coordinator), base_model_dir=None
        )
        with LadaClient(config) as client:
            client_id = client.enroll()
            candidates = [
                Candidate(
                    sample_id=f"p{i}",
                    question=f"{i} + 1?",
                    path=f"{i} + 1 = {i + 1}. The answer is {i + 1}.",
                    llm_logprob=-3.0,
                    llm_tokens=9,
                )
                for i in range(4)
            ]

            def open_round(t: int) -> None:
                store.open_round(
                    t,
                    RoundInfo(
                        round=t, phase="features", total_rounds=3, candidates=candidates, feature_names=["path_tokens"]
                    ),
                )

            open_round(1)
            store.set_phase(1, Phase.TRAINING)
            waited = client.step()
            assert (waited.info.round, waited.info.phase) == (1, Phase.TRAINING)
            assert not waited.ran and not waited.already_done and waited.left is None

            store.set_phase(1, Phase.FEATURES)
            client.mark_done([1])  # e.g. remembered by an app from an earlier process
            again = client.step(1)
            assert again.already_done and not again.ran and again.left is None
            assert store.uploads(1, "features.put") == {}  # it did not score the round a second time

            open_round(2)
            store.quarantine(2, client_id, "features", "injected for the test")
            left = client.step(1)
            assert not left.ran and left.left is not None and "quarantined" in left.left
            assert client.done_rounds == {1, 2}
            assert client.step(2).already_done  # a round it left is not run again


def test_the_held_out_probe_of_a_rounds_end_is_the_next_rounds_start_until_the_scorer_changes(tiny_world, tmp_path):
    """The probe generates the SLM's own reasoning for every held-out question, the costliest part
    of the reward: a round's "after" on a scorer is reused as the next round's "before" on the same
    scorer, and measured anew, to the same figures, once the scorer has been reloaded."""
    from lada_client.client import _Outcome
    from lada_client.common.wire import Candidate

    generated: list[int] = []

    class Counting(LadaClient):  # counts the probe's generations on the real scorer
        def load_slm(self, path):
            slm = super().load_slm(path)
            generate = slm.generate

            def counted(prompts, *args, **kwargs):
                generated.append(len(prompts))
                return generate(prompts, *args, **kwargs)

            slm.generate = counted
            return slm

    allocated = [
        Candidate(sample_id="p0", question="2 + 3?", path="2 + 3 = 5. The answer is 5.", llm_logprob=-3.0, llm_tokens=9)
    ]
    config = _config(tiny_world, tmp_path, tiny_world["client0"] / "base")
    with Counting(config) as client:
        n = len(client._heldout)
        assert n > 0
        end, start, fresh = _Outcome(), _Outcome(), _Outcome()
        client._measure(end, allocated, "after")
        client._measure(start, allocated, "before")
        assert generated == [n]  # one probe for both
        assert start.before == end.after and start.heldout_pairs
        client._reload_slm(config.scoring_model)
        client._measure(fresh, allocated, "before")
        assert generated == [n, n]  # a reloaded scorer is probed again
        assert (fresh.before, fresh.heldout_pairs) == (start.before, start.heldout_pairs)  # same model, same figures
