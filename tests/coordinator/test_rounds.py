"""The round engine isolates each device's data: a poisoned upload, a broken filter or a failing step
quarantines that device for the round, never the round; the engine thread survives errors that are
not any device's; and it resumes on whatever state it finds (real SQLite, the real tiny LLM)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.common.wire import (
    Candidate,
    Capabilities,
    FeatureUpload,
    PathOffer,
    PublicQuestion,
    RewardReport,
    RoundInfo,
)
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.allocation.eenet import FilterConfig
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.server.run import build
from lada_coordinator.store import ClientRecord
from lada_coordinator.stores.records import PathProvenance
from lada_coordinator.validation import feature_matrix

NAMES = ["slm_path_nll", "logp_gap"]


@pytest.fixture()
def engine(tmp_path, tiny_world):
    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        rounds=1,
        min_clients=4,
        feature_names=tuple(NAMES),
        train_llm=False,
        phase_timeout_s=30,
        slm_filter=FilterConfig(budget=2),
    )
    _, engine, store = build(config)
    for name in ("honest", "huge", "dupes", "garbage"):
        store.add_client(ClientRecord(f"{name}-1", name, f"s{name}", f"k{name}", "add", "m", Capabilities(), 0, 0, 0))
    yield engine
    engine.stop_event.set()
    if engine.is_alive():
        engine.join(10)
    store.close()


def _open(store, n: int = 6, sources: dict[str, str] | None = None) -> RoundInfo:
    """Open round 1 with ``n`` candidates; ``sources`` records where each one's path came from."""
    info = RoundInfo(
        round=1,
        phase="features",
        total_rounds=1,
        candidates=[
            Candidate(
                sample_id=f"p{i}",
                question=f"{i} + 1?",
                path=f"{i} + 1 = {i + 1}. The answer is {i + 1}.",
                llm_logprob=-3.0,
                llm_tokens=9,
            )
            for i in range(n)
        ],
        offer_questions=[PublicQuestion(sample_id=f"o{i}", question=f"{i} + 2?", answer=str(i + 2)) for i in range(2)],
        feature_names=NAMES,
    )
    store.open_round(1, info, PathProvenance(path_sources=sources or {}))
    return info


def _store_raw(store, client_id: str, kind: str, payload: str) -> None:
    """Write an upload straight into the database, as an older coordinator (or a hand edit) might have."""
    with store.transaction() as db:
        store.put_upload(db, 1, client_id, kind, payload)


def _features(info: RoundInfo, value: float = 1.0, offers: list[PathOffer] = ()) -> str:
    rows = [[value + i, 0.5] for i in range(len(info.candidates))]
    return FeatureUpload.model_construct(
        round=1,
        feature_names=NAMES,
        sample_ids=[c.sample_id for c in info.candidates],
        features=rows,
        offers=list(offers),
        secagg_keys=None,
        adapter_size=0,
    ).model_dump_json()


def _poison(engine, info: RoundInfo) -> None:
    """The uploads that stopped every federation on f27f7dc: a value beyond float32 (the filter
    raised), two offers for one question (the LLM-side filter raised), and a row that is not JSON."""
    store = engine.store
    _store_raw(store, "honest-1", "features.put", _features(info))
    _store_raw(store, "huge-1", "features.put", _features(info, value=1e39))
    offer = PathOffer(sample_id="o0", path="0 + 2 = 2. The answer is 2.")
    _store_raw(store, "dupes-1", "features.put", _features(info, offers=[offer, offer]))
    _store_raw(store, "garbage-1", "features.put", "{not json")


def test_poisoned_uploads_quarantine_their_clients_and_the_rest_is_allocated(engine):
    info = _open(engine.store)
    _poison(engine, info)
    engine._allocate(1)
    aside = engine.store.quarantined(1)
    assert set(aside) == {"huge-1", "dupes-1", "garbage-1"}
    assert "1e+06" in aside["huge-1"] and "once" in aside["dupes-1"] and "malformed_payload" in aside["garbage-1"]
    assert engine.store.allocation(1, "honest-1", SLM)[0]  # the honest client got its samples
    assert all(engine.store.allocation(1, c, SLM) is None for c in aside)
    assert engine.store.current_round() == (1, "training")


def test_matrices_stored_at_upload_are_used_as_the_payloads_were_and_a_bad_one_is_contained(engine):
    """The engine reads the feature matrix stored when the HTTP layer accepted an upload, not its
    payload; a row without one (an older coordinator) is parsed as before and gives the very same
    allocation and reward history; a matrix that does not fit the round sends the engine back to
    the payload, so only a device whose payload is bad too is set aside."""
    store = engine.store
    info = _open(store)
    payload = _features(info)
    matrix = feature_matrix(FeatureUpload.model_validate_json(payload))
    with store.transaction() as db:
        store.put_upload(db, 1, "honest-1", "features.put", payload, matrix)  # as the server stores it
        store.put_upload(db, 1, "huge-1", "features.put", payload)  # as an earlier version did
        store.put_upload(db, 1, "dupes-1", "features.put", "{not json", matrix)  # the payload is not read
        store.put_upload(db, 1, "garbage-1", "features.put", "{not json", matrix[:, :1])  # does not fit
    engine._allocate(1)
    aside = store.quarantined(1)
    assert list(aside) == ["garbage-1"] and aside["garbage-1"].startswith("features: malformed_payload")
    ids, why = store.allocation(1, "honest-1", SLM)
    assert ids and why == "cold_start"
    assert store.allocation(1, "huge-1", SLM) == store.allocation(1, "dupes-1", SLM) == (ids, why)

    for cid in ("honest-1", "huge-1"):
        reward = RewardReport(
            round=1,
            reward=0.3,
            ppl_before=2.0,
            ppl_after=1.4,
            n_allocated=len(ids),
            test_accuracy=0.5,
            bytes_sent=1,
            bytes_received=1,
        )
        _store_raw(store, cid, "reward.put", reward.model_dump_json())
    engine._close(1, final=True)
    assert set(store.round_metrics()[0].metrics["clients"]) == {"honest", "huge"}
    flt = {cid: engine.allocator._filter(cid, SLM, len(NAMES)) for cid in ("honest-1", "huge-1")}
    assert flt["honest-1"].replay_size == len(ids)
    assert np.array_equal(flt["honest-1"]._buffer_z, flt["huge-1"]._buffer_z)

    # a NaN in a stored matrix (a hand edit) is not used: the payload is read again instead
    with store.transaction() as db:
        db.execute(
            "UPDATE uploads SET matrix = ? WHERE client_id = 'honest-1'", (np.full_like(matrix, np.nan).tobytes(),)
        )
    assert np.array_equal(engine._features(1, engine._context(1))["honest-1"], matrix)


def test_a_failure_inside_one_clients_filter_quarantines_only_that_client(engine):
    """Independently of the upload checks: a step that breaks on one client's state (here its
    stored filter is corrupt) sets that client aside, and the round goes on."""
    info = _open(engine.store)
    for cid in ("honest-1", "huge-1"):
        _store_raw(engine.store, cid, "features.put", _features(info))
    engine.store.save_filter("huge-1", SLM, b"LADAEEN2 not a filter", 0)
    engine._allocate(1)
    aside = engine.store.quarantined(1)
    assert list(aside) == ["huge-1"] and aside["huge-1"].startswith("allocation: ")
    assert engine.store.allocation(1, "honest-1", SLM)[0]


def test_a_device_whose_capability_record_is_unreadable_is_not_given_training(engine):
    """Fail closed: a stored record that does not say the device can train (a hand edit, a damaged
    row) makes it score-only; the engine never allocates training the device did not declare."""
    info = _open(engine.store)
    for cid in ("honest-1", "huge-1"):
        _store_raw(engine.store, cid, "features.put", _features(info))
    with engine.store.transaction() as db:
        db.execute("UPDATE clients SET capabilities = '{}' WHERE client_id = 'huge-1'")
    engine._allocate(1)
    assert engine.store.allocation(1, "huge-1", SLM) == ([], "score_only")
    assert engine.store.allocation(1, "honest-1", SLM)[0]


def test_engine_resumes_on_poisoned_state_and_finishes_the_round(engine):
    """A coordinator (re)started on a database that holds poison finishes the round without repair."""
    store = engine.store
    info = _open(store)
    _poison(engine, info)
    engine.start()
    deadline = time.monotonic() + 60
    while store.current_round() != (1, "training"):
        assert engine.is_alive() and time.monotonic() < deadline, engine.status.to_dict()
        time.sleep(0.1)
    ids, _ = store.allocation(1, "honest-1", SLM)
    reward = RewardReport(
        round=1,
        reward=0.3,
        ppl_before=2.0,
        ppl_after=1.4,
        n_allocated=len(ids),
        test_accuracy=0.5,
        bytes_sent=1,
        bytes_received=1,
    )
    _store_raw(store, "honest-1", "reward.put", reward.model_dump_json())
    engine.wake.set()
    engine.join(60)
    assert not engine.is_alive() and store.current_round() == (1, "finished")
    metrics = store.round_metrics()[0].metrics
    assert list(metrics["clients"]) == ["honest"] and metrics["clients"]["honest"]["reward"] == 0.3
    assert set(metrics["quarantined"]) == {"huge", "dupes", "garbage"}
    assert engine.status.error == "" and engine.status.errors == []


def test_engine_survives_an_error_that_is_not_a_devices_and_retries(engine, monkeypatch):
    """The LLM failing once (say, out of memory while generating paths) costs a retry, not the engine."""
    real = engine._llm_factory
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real()

    engine._llm_factory = flaky
    monkeypatch.setattr("lada_coordinator.rounds._RETRY_BACKOFF_S", (0.1, 0.2))
    engine.start()
    deadline = time.monotonic() + 120
    while engine.store.current_round() is None:
        assert engine.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    assert engine.is_alive() and calls["n"] == 2
    assert [e["error"] for e in engine.status.errors] == ["RuntimeError: CUDA out of memory (injected)"]
    assert json.dumps(engine.status.to_dict())  # what the operator's view shows


def test_llm_accuracy_is_reported_per_domain_of_the_evaluation_set(tmp_path, tiny_world):
    """With the local-federation evaluation hook the LLM is scored pooled and per domain, from one
    generation (a domain only the clients know shows whether the LLM direction taught it)."""
    from lada_client.data.federation import FederationData

    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        rounds=1,
        train_llm=False,
    )
    _, engine, store = build(config, tiny_world["data"], llm_eval_size=3)
    try:
        clients = FederationData.load(tiny_world["data"]).clients
        scores = engine._llm_accuracy()
        assert set(scores["accuracy_by_domain"]) == {c.domain for c in clients}
        per_domain = {c.domain: 0 for c in clients}
        for c in clients:
            per_domain[c.domain] += 3
        pooled = sum(scores["accuracy_by_domain"][d] * n for d, n in per_domain.items()) / sum(per_domain.values())
        assert scores["accuracy"] == pytest.approx(pooled)
    finally:
        store.close()


def test_the_llm_direction_scores_every_clients_offers_at_once_and_sets_aside_only_a_bad_one(engine):
    """Offers of all clients go to the LLM in one batch; a client whose offers break its own
    selection (two offers for one question) is set aside, and the others' offers are trained on."""
    info = _open(engine.store)
    first, second = list(engine.public_by_id)[:2]  # offers answer questions of the public pool
    offer = PathOffer(sample_id=first, path="0 + 2 = 2. The answer is 2.")
    other = PathOffer(sample_id=second, path="1 + 2 = 3. The answer is 3.")
    features = {
        "honest-1": FeatureUpload.model_validate_json(_features(info, offers=[offer, other])),
        "huge-1": FeatureUpload.model_validate_json(_features(info, offers=[other])),
        "dupes-1": FeatureUpload.model_validate_json(_features(info, offers=[offer, offer])),
    }
    batches: list[int] = []
    real = engine.llm.offer_features
    engine.llm.offer_features = lambda samples, *a, **k: batches.append(len(samples)) or real(samples, *a, **k)
    report = engine._llm_direction(1, features)
    assert batches == [5]  # one batch: every client's offers
    aside = engine.store.quarantined(1)
    assert list(aside) == ["dupes-1"] and aside["dupes-1"].startswith("llm_offers")
    assert report["n_trained"] >= 1


def test_offers_that_break_the_llms_batch_are_scored_again_client_by_client(engine):
    """If the one batch fails, each client's offers are scored on their own: only the client whose
    offers fail again is set aside (here its path breaks the LLM's scoring)."""
    info = _open(engine.store)
    first, second = list(engine.public_by_id)[:2]
    good = [PathOffer(sample_id=first, path="0 + 2 = 2. The answer is 2."), PathOffer(sample_id=second, path="3.")]
    features = {
        "honest-1": FeatureUpload.model_validate_json(_features(info, offers=good)),
        "huge-1": FeatureUpload.model_validate_json(_features(info, offers=[PathOffer(sample_id=first, path="BREAK")])),
    }
    batches: list[int] = []
    real = engine.llm.offer_features

    def scoring(samples, paths, **kw):
        batches.append(len(samples))
        if "BREAK" in paths:  # a path the LLM's scoring cannot take
            raise RuntimeError("tokenizer refused the path")
        return real(samples, paths, **kw)

    engine.llm.offer_features = scoring
    report = engine._llm_direction(1, features)
    assert batches == [3, 2, 1]  # the batch, then client by client
    aside = engine.store.quarantined(1)
    assert list(aside) == ["huge-1"] and "tokenizer refused" in aside["huge-1"]
    assert report["n_trained"] >= 1


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_the_llms_own_verified_paths_are_rehearsed_alongside_the_slm_paths(engine, ratio):
    """With ``llm_rehearsal`` r, the LLM's LoRA step trains on ⌈r × chosen⌉ of the round's paths
    that the LLM itself sampled and verified (never a gold fallback), as plain SFT rows."""
    engine.config = replace(engine.config, llm_rehearsal=ratio)
    sources = {f"p{i}": "llm" if i % 2 == 0 else "gold" for i in range(6)}
    info = _open(engine.store, sources=sources)
    first, second = list(engine.public_by_id)[:2]
    offers = [
        PathOffer(sample_id=first, path="0 + 2 = 2. The answer is 2."),
        PathOffer(sample_id=second, path="1 + 2 = 3. The answer is 3."),
    ]
    features = {"honest-1": FeatureUpload.model_validate_json(_features(info, offers=offers))}
    rehearsed: list = []
    real = engine.llm.trainer.train_round
    engine.llm.trainer.train_round = lambda teacher, pairs, private, *a, **k: (
        rehearsed.extend(private) or real(teacher, pairs, private, *a, **k)
    )
    report = engine._llm_direction(1, features)
    assert report["n_trained"] >= 1
    assert report["n_rehearsed"] == len(rehearsed) == min(int(np.ceil(ratio * report["n_trained"])), 3)
    own = {(format_prompt(c.question), format_target(c.path)) for c in info.candidates if sources[c.sample_id] == "llm"}
    assert set(rehearsed) <= own
