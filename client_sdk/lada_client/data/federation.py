"""The federation data set: one private, single-domain shard per client plus a shared public pool.

Each client owns one reasoning domain (the non-IID setting), while the public pool mixes every
domain evenly because the coordinator distils the LLM's rationales on it for all clients. No
question text appears in two splits, so a score on a private test set never measures recall of a
public or training question.

On-disk layout (one JSON object per line, see :meth:`Sample.to_dict`)::

    manifest.json
    public.jsonl
    clients/<name>/train.jsonl
    clients/<name>/test.jsonl
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lada_client.data.samples import Sample

__all__ = ["ClientData", "FederationData", "load_client", "load_public"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PUBLIC_FILE = "public.jsonl"
CLIENTS_DIR = "clients"
FORMAT_VERSION = 1


@dataclass
class ClientData:
    """A client's private shard; only its owner's device ever reads it."""

    name: str
    domain: str
    train: list[Sample]
    test: list[Sample]


@dataclass
class FederationData:
    """All clients' shards plus the public pool (the simulation builds one with
    ``lada_coordinator.simulation.domains.make_federation``; a user's files, with
    :func:`lada_client.data.user_files.make_user_federation`)."""

    clients: list[ClientData]
    public: list[Sample]
    seed: int | None = None

    def client(self, name: str) -> ClientData:
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(f"no client named {name!r}; clients: {[c.name for c in self.clients]}")

    def save(self, directory: Path) -> None:
        """Write the layout described in the module docstring, manifest last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_jsonl(directory / PUBLIC_FILE, self.public)
        for client in self.clients:
            client_dir = directory / CLIENTS_DIR / client.name
            client_dir.mkdir(parents=True, exist_ok=True)
            _write_jsonl(client_dir / "train.jsonl", client.train)
            _write_jsonl(client_dir / "test.jsonl", client.test)
        manifest = {
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "public_size": len(self.public),
            "public_domains": sorted({s.domain for s in self.public}),
            "clients": [
                {
                    "name": c.name,
                    "domain": c.domain,
                    "train_size": len(c.train),
                    "test_size": len(c.test),
                }
                for c in self.clients
            ],
        }
        # Written last so a directory with a manifest is always complete.
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        logger.info(
            "saved federation (%d clients, %d public) to %s",
            len(self.clients),
            len(self.public),
            directory,
        )

    @classmethod
    def load(cls, directory: Path) -> FederationData:
        """Read a directory written by :meth:`save`, checking sizes against the manifest."""
        directory = Path(directory)
        manifest = _read_manifest(directory)
        public = _read_jsonl(directory / PUBLIC_FILE)
        _check_size(directory / PUBLIC_FILE, public, manifest.get("public_size"))
        entries = _client_entries(directory, manifest)
        clients = [_load_client_entry(directory, entry) for entry in entries]
        return cls(clients=clients, public=public, seed=manifest.get("seed"))


def load_client(directory: Path, name: str) -> ClientData:
    """Load only ``name``'s shard, so a device never needs the other clients' files."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    entries = _client_entries(directory, manifest)
    for entry in entries:
        if entry["name"] == name:
            return _load_client_entry(directory, entry)
    names = [entry["name"] for entry in entries]
    raise ValueError(f"{directory / MANIFEST} has no client {name!r}; clients: {names}")


def _write_jsonl(path: Path, samples: Sequence[Sample]) -> None:
    lines = (json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples)
    path.write_text("".join(lines), encoding="utf-8")


def _read_jsonl(path: Path) -> list[Sample]:
    if not path.is_file():
        raise FileNotFoundError(f"missing federation file {path}")
    samples: list[Sample] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                samples.append(Sample.from_dict(json.loads(line)))
            except ValueError as exc:  # JSONDecodeError is a ValueError
                raise ValueError(f"corrupt record in {path} line {line_no}: {exc}") from exc
    return samples


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"missing federation manifest {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt federation manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"corrupt federation manifest {path}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}, expected {FORMAT_VERSION}")
    return manifest


def _client_entries(directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    entries = manifest.get("clients")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("domain"), str) for e in entries
    ):
        raise ValueError(f"corrupt federation manifest {directory / MANIFEST}: bad 'clients' list")
    return entries


def _load_client_entry(directory: Path, entry: dict[str, Any]) -> ClientData:
    client_dir = directory / CLIENTS_DIR / entry["name"]
    train = _read_jsonl(client_dir / "train.jsonl")
    test = _read_jsonl(client_dir / "test.jsonl")
    _check_size(client_dir / "train.jsonl", train, entry.get("train_size"))
    _check_size(client_dir / "test.jsonl", test, entry.get("test_size"))
    return ClientData(name=entry["name"], domain=entry["domain"], train=train, test=test)


def _check_size(path: Path, samples: Sequence[Sample], expected: object) -> None:
    if expected is not None and expected != len(samples):
        raise ValueError(f"{path} holds {len(samples)} samples but the manifest says {expected}")


def load_public(directory: Path) -> list[Sample]:
    """Load only the public pool: the coordinator never needs (nor gets) private shards."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    public = _read_jsonl(directory / PUBLIC_FILE)
    _check_size(directory / PUBLIC_FILE, public, manifest.get("public_size"))
    return public
