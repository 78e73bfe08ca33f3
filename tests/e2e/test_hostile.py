"""The hostile-client suite (``benchmarks/_hostile.py``) against a real coordinator: every attack a
validly enrolled device (or a keyless one) tries is refused or defused, and a federation with one
hostile member among honest devices finishes every round with the honest devices' results intact."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from lada_client.common.secagg import SecAggConfig
from lada_client.common.wire import Ack, Candidate, FeatureUpload, PublicQuestion, RoundInfo
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.config import CoordinatorConfig

pytestmark = pytest.mark.e2e  # a real coordinator, and whole federations of processes

REPO = Path(__file__).resolve().parents[2]


def _catalogue():
    spec = importlib.util.spec_from_file_location("lada_hostile", REPO / "benchmarks" / "_hostile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lada_hostile"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


hostile = _catalogue()


@pytest.fixture()
def target(tmp_path, tiny_world, free_port, serve_coordinator, issue):
    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        port=free_port,
        rounds=2,
        max_body_bytes=200_000,
        header_timeout_s=1.0,
        body_timeout_s=2.0,
        enroll_burst=10,
        max_concurrent_requests=16,  # below the slowloris' 50 connections: they must not take the slots
    )
    with serve_coordinator(config) as (url, store):
        info = RoundInfo(
            round=1,
            phase="features",
            total_rounds=2,
            feature_names=["slm_path_nll", "logp_gap"],
            candidates=[
                Candidate(
                    sample_id=f"p{i}",
                    question=f"{i}+1?",
                    path=f"The answer is {i + 1}.",
                    llm_logprob=-2.0,
                    llm_tokens=6,
                )
                for i in range(4)
            ],
            offer_questions=[
                PublicQuestion(sample_id=f"o{i}", question=f"2+{i}?", answer=str(2 + i)) for i in range(2)
            ],
            host_framework="cotuning",
            secagg_configs={"default/any": SecAggConfig(threshold=1).to_dict()},
        )
        store.open_round(1, info)
        yield (
            hostile.Target(
                url=url,
                issue=lambda ttl_s=None: issue(config, ttl_s=ttl_s),
                header_timeout_s=config.header_timeout_s,
                body_timeout_s=config.body_timeout_s,
                max_body_bytes=config.max_body_bytes,
                enroll_burst=config.enroll_burst,
            ),
            store,
            info,
        )


def test_every_attack_of_the_catalogue_is_held(target):
    tgt, store, info = target
    outcomes = hostile.run_all(tgt, "any") + hostile.run_all(tgt, "features")
    # rewards: a device with a real allocation forges its report
    t = hostile.device(tgt)
    up = FeatureUpload(
        round=1,
        feature_names=info.feature_names,
        sample_ids=[c.sample_id for c in info.candidates],
        features=[[1.0, 0.5]] * len(info.candidates),
    )
    t.call("features.put", up, 1, Ack)
    store.put_allocations(1, SLM, {t.client_id: (["p0", "p1"], "test")})
    store.set_phase(1, "training")
    outcomes += hostile.poison_reward(t, 1, 2)
    outcomes += hostile.run_all(tgt, "last")
    failed = [o for o in outcomes if not o.held]
    assert not failed, "\n".join(f"{o.attack}: {o.answer}" for o in failed)
    assert {o.attack for o in outcomes} >= set(hostile.CATALOGUE)
    # the attackers are on record for the operator, each with its reason
    aside = store.quarantined(1)
    assert len(aside) == sum(a.phase == "features" for a in hostile.CATALOGUE.values()) + 1  # + the forged reward
    assert not any("Traceback" in why for why in aside.values())


def test_one_hostile_member_cannot_stop_a_federation(tiny_world, free_port):
    """Co-tuning, three honest devices and one hostile member of their group, three rounds: the
    hostile member is set aside every round (duplicate offers, a short share bundle, shares that
    open for nobody and a forged reward), and every round finishes with the three honest devices'
    results, their secure average over exactly them."""
    from lada_coordinator.federation import FederationSettings, prepare

    settings = FederationSettings(
        workdir=tiny_world["workdir"].parent / "hostile-fed",
        clients=3,
        rounds=3,
        candidates=16,
        budget=6,
        port=free_port,
        n_train=40,
        n_test=16,
        n_public=160,
        llm_warmup_steps=4,
        slm_warmup_steps=4,
        offer_questions=4,
        host_framework="cotuning",
        slm_presets=("slm-small",),
        epochs=1,
    )
    run = hostile.hostile_federation(settings, prepare(settings))
    member, status = run["member"], run["status"]
    assert all(rc == 0 for rc in run["exit_codes"].values()), run["logs"]
    assert not member.error, member.error
    assert [o.attack for o in member.outcomes] == [
        "member_duplicate_offers",
        "member_short_share_bundle",
        "member_shares_that_open_for_nobody",
        "member_reward_overclaims",
    ]
    assert all(o.held for o in member.outcomes), [(o.attack, o.answer) for o in member.outcomes]
    assert [r["phase"] for r in status["rounds"]] == ["closed", "closed", "finished"]
    for r in status["rounds"]:
        assert sorted(r["clients"]) == ["client0", "client1", "client2"], r  # every honest result, nobody else's
        assert list(r["quarantined"]) == ["mallory"], r
        (summary,) = r["secagg"].values()
        assert summary == {"contributors": 3, "error": None}, r
    assert status["engine"]["error"] == "" and status["engine"]["errors"] == []
    assert [q["name"] for q in status["quarantine"]] == ["mallory"] * 3  # on record for the operator, with reasons
    import safetensors.numpy

    adapters = [
        safetensors.numpy.load_file(str(run["run_dir"] / n / "adapter" / "adapter_model.safetensors"))
        for n in run["exit_codes"]
    ]
    for key in adapters[0]:  # the honest members adopted one average, computed without the hostile one
        np.testing.assert_allclose(adapters[0][key], adapters[1][key], atol=1e-6)
        np.testing.assert_allclose(adapters[0][key], adapters[2][key], atol=1e-6)
