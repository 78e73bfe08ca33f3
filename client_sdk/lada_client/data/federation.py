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
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lada_client.data.domains import DOMAINS, Sample, generate

__all__ = ["ClientData", "FederationData", "load_client", "make_federation"]

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
    """All clients' shards plus the public pool, as produced by :func:`make_federation`."""

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


def make_federation(
    domains: Sequence[str],
    n_train: int,
    n_test: int,
    n_public: int,
    seed: int,
) -> FederationData:
    """Build ``client{i}`` with domain ``domains[i]`` and a public pool mixing all of ``DOMAINS``.

    Splits are generated in a fixed order (public, then each client's test, then train), each
    excluding every question generated before it, so all splits are disjoint by question text and
    the whole federation is a pure function of its arguments.
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; valid domains: {', '.join(DOMAINS)}")
    if min(n_train, n_test, n_public) < 0:
        raise ValueError("split sizes must be non-negative")
    used: set[str] = set()

    def split(domain: str, n: int, tag: str) -> list[Sample]:
        samples = generate(domain, n, _derive_seed(seed, tag), tag, exclude=used)
        used.update(s.question for s in samples)
        return samples

    public: list[Sample] = []
    per_domain, remainder = divmod(n_public, len(DOMAINS))
    for index, domain in enumerate(DOMAINS):
        count = per_domain + (1 if index < remainder else 0)
        public.extend(split(domain, count, f"public-{domain}"))
    # Interleave domains so any contiguous slice of the pool (a round's batch) is mixed.
    order = np.random.default_rng(_derive_seed(seed, "public-order")).permutation(len(public))
    public = [public[i] for i in order]

    clients: list[ClientData] = []
    for index, domain in enumerate(domains):
        name = f"client{index}"
        test = split(domain, n_test, f"{name}-test")
        train = split(domain, n_train, f"{name}-train")
        clients.append(ClientData(name=name, domain=domain, train=train, test=test))
    logger.info(
        "built federation: %d clients, %d train / %d test each, %d public, seed %d",
        len(clients),
        n_train,
        n_test,
        len(public),
        seed,
    )
    return FederationData(clients=clients, public=public, seed=seed)


def _derive_seed(seed: int, tag: str) -> int:
    """Independent, stable sub-seed per split, so adding a client does not reshuffle the others."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(tag.encode("utf-8"))])
    return int(sequence.generate_state(1)[0])


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
