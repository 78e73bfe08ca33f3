from __future__ import annotations

import json
from collections import Counter
from itertools import chain
from pathlib import Path

import pytest

from lada_client.data.domains import DOMAINS
from lada_client.data.federation import FederationData, load_client, make_federation


@pytest.fixture(scope="module")
def federation() -> FederationData:
    return make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=3)


def _all_samples(fed: FederationData) -> list:
    return list(chain(fed.public, *([*c.train, *c.test] for c in fed.clients)))


def test_clients_get_their_own_domain(federation: FederationData) -> None:
    assert [(c.name, c.domain) for c in federation.clients] == [
        ("client0", "add"),
        ("client1", "mul"),
        ("client2", "two_step"),
    ]
    for client in federation.clients:
        assert len(client.train) == 40 and len(client.test) == 10
        assert {s.domain for s in client.train + client.test} == {client.domain}


def test_public_pool_mixes_all_domains_evenly(federation: FederationData) -> None:
    counts = Counter(s.domain for s in federation.public)
    assert len(federation.public) == 42
    assert set(counts) == set(DOMAINS)
    assert max(counts.values()) - min(counts.values()) <= 1
    # Shuffled, not grouped by domain.
    assert [s.domain for s in federation.public[:10]] != [federation.public[0].domain] * 10


def test_ids_unique_and_prefixed_by_split(federation: FederationData) -> None:
    ids = [s.sample_id for s in _all_samples(federation)]
    assert len(ids) == len(set(ids))
    assert all(s.sample_id.startswith("public-") for s in federation.public)
    for client in federation.clients:
        assert all(s.sample_id.startswith(f"{client.name}-train-") for s in client.train)
        assert all(s.sample_id.startswith(f"{client.name}-test-") for s in client.test)


def test_splits_are_disjoint_by_question() -> None:
    # Two clients on the same domain are the hardest case for collisions.
    fed = make_federation(["mul", "mul"], n_train=300, n_test=100, n_public=400, seed=0)
    questions = [s.question for s in _all_samples(fed)]
    assert len(questions) == len(set(questions))


def test_deterministic_per_seed(federation: FederationData) -> None:
    again = make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=3)
    other = make_federation(["add", "mul", "two_step"], n_train=40, n_test=10, n_public=42, seed=4)
    assert again == federation
    assert other != federation


def test_unknown_domain_rejected() -> None:
    with pytest.raises(ValueError, match="valid domains"):
        make_federation(["add", "nope"], 1, 1, 4, seed=0)


def test_save_load_round_trip(federation: FederationData, tmp_path: Path) -> None:
    federation.save(tmp_path)
    assert (tmp_path / "public.jsonl").is_file()
    assert (tmp_path / "clients" / "client1" / "train.jsonl").is_file()
    assert (tmp_path / "clients" / "client1" / "test.jsonl").is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert manifest["public_size"] == 42
    assert manifest["clients"][2] == {
        "name": "client2",
        "domain": "two_step",
        "train_size": 40,
        "test_size": 10,
    }
    assert FederationData.load(tmp_path) == federation
    assert load_client(tmp_path, "client1") == federation.clients[1]


def test_load_client_needs_only_its_own_files(federation: FederationData, tmp_path: Path) -> None:
    federation.save(tmp_path)
    (tmp_path / "public.jsonl").unlink()
    for other in ("client0", "client2"):
        for split in ("train", "test"):
            (tmp_path / "clients" / other / f"{split}.jsonl").unlink()
    assert load_client(tmp_path, "client1") == federation.clients[1]
    with pytest.raises(ValueError, match="client9"):
        load_client(tmp_path, "client9")


def test_missing_directory_names_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        FederationData.load(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        load_client(tmp_path / "absent", "client0")


def test_missing_split_file_is_named(federation: FederationData, tmp_path: Path) -> None:
    federation.save(tmp_path)
    (tmp_path / "clients" / "client0" / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"client0.test\.jsonl"):
        FederationData.load(tmp_path)


@pytest.mark.parametrize(
    "corruption",
    ["not json\n", '{"sample_id": "x"}\n', "[1, 2]\n"],
)
def test_corrupt_records_are_reported_with_file(federation: FederationData, tmp_path: Path, corruption: str) -> None:
    federation.save(tmp_path)
    path = tmp_path / "clients" / "client2" / "train.jsonl"
    path.write_text(path.read_text() + corruption)
    with pytest.raises(ValueError, match=r"train\.jsonl line 41"):
        load_client(tmp_path, "client2")


def test_corrupt_manifest_and_size_mismatch(federation: FederationData, tmp_path: Path) -> None:
    federation.save(tmp_path)
    public = tmp_path / "public.jsonl"
    public.write_text("".join(public.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match=r"public\.jsonl holds 41"):
        FederationData.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        FederationData.load(tmp_path)
