"""The federation layout on disk: a device reads its own shard, the coordinator the public pool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lada_client.data.federation import ClientData, FederationData, load_client, load_public
from lada_client.data.samples import Sample


def _samples(prefix: str, domain: str, n: int) -> list[Sample]:
    return [
        Sample(
            f"{prefix}-{i:06d}",
            domain,
            f"{prefix}: what is {i} + 1?",
            f"{i} + 1 = {i + 1}. The answer is {i + 1}.",
            str(i + 1),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def federation() -> FederationData:
    clients = [
        ClientData(
            f"client{i}", domain, _samples(f"client{i}-train", domain, 40), _samples(f"client{i}-test", domain, 10)
        )
        for i, domain in enumerate(["add", "mul", "two_step"])
    ]
    return FederationData(clients=clients, public=_samples("public", "add", 42), seed=3)


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
    assert load_public(tmp_path) == federation.public


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


def test_federation_names_its_clients(federation: FederationData) -> None:
    assert federation.client("client2") is federation.clients[2]
    with pytest.raises(KeyError, match="client9"):
        federation.client("client9")
