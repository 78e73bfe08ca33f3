"""Teacher reasoning paths computed once, stored, and served to every round (method step 1).

Sampling and verifying the LLM's reasoning paths over the public pool is the most expensive thing
a CPU coordinator does, and its result depends only on the teacher's weights, its prompt and the
question. A :class:`PathStore` is a JSON Lines file of those results, one record per question::

    {"key": "<sha256 of teacher digest, prompt digest, question>", "sample_id": "...",
     "path": "... The answer is 5.", "logprob": -12.3, "tokens": 18, "correct": true}

``lada-coordinator teacher-paths`` fills it with a fast engine (:mod:`lada_coordinator.llm.llamacpp`,
llama.cpp on the GGUF file) and appends as it goes, so an interrupted run resumes where it stopped;
``CoordinatorConfig.teacher_paths`` makes the round engine read candidates' paths from it instead of
generating them (a question the store lacks falls back to the in-process LLM). The same store
serves every run and seed that uses the same teacher and prompt: the key changes with either.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lada_client.data.samples import Sample

log = logging.getLogger(__name__)

__all__ = ["PathRecord", "PathStore", "path_key"]


def path_key(teacher_digest: str, prompt: str, question: str) -> str:
    h = hashlib.sha256()
    for part in (teacher_digest, hashlib.sha256(prompt.encode()).hexdigest(), question):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class PathRecord:
    key: str
    sample_id: str
    path: str  # the teacher's path (single line, ends in "The answer is ..."), or "" when none was right
    logprob: float  # summed log-prob of the path under the teacher (0 when path is "")
    tokens: int
    correct: bool
    attempts: int = 1


class PathStore:
    """The records of one teacher and prompt (``teacher_digest``, ``prompt``), read from and
    appended to ``path``. Records of other teachers in the same file are kept but not served."""

    def __init__(self, path: Path, teacher_digest: str, prompt: str) -> None:
        self.path = Path(path)
        self.teacher_digest, self.prompt = teacher_digest, prompt
        self._records: dict[str, PathRecord] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = PathRecord(**json.loads(line))
                except (ValueError, TypeError) as exc:  # a line cut by a crash is the only expected damage
                    log.warning("%s:%d: skipping a damaged record (%s)", self.path, number, exc)
                    continue
                self._records[record.key] = record

    def key(self, sample: Sample) -> str:
        return path_key(self.teacher_digest, self.prompt, sample.question)

    def get(self, sample: Sample) -> PathRecord | None:
        return self._records.get(self.key(sample))

    def missing(self, samples: Iterable[Sample]) -> list[Sample]:
        return [s for s in samples if self.key(s) not in self._records]

    def add(self, records: Sequence[PathRecord]) -> None:
        """Append records (flushed and synced: a crash loses at most the line being written)."""
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(asdict(record)) + "\n")
                self._records[record.key] = record
            fh.flush()
            os.fsync(fh.fileno())

    def __len__(self) -> int:
        return len(self._records)

    @classmethod
    def open(cls, path: Path) -> PathStore:
        """Open a store for serving: the teacher and prompt are those its header line names."""
        header = Path(path).with_suffix(".json")
        try:
            meta = json.loads(header.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"teacher paths {path}: cannot read its header {header} ({exc})") from exc
        return cls(path, meta["teacher_digest"], meta["prompt"])

    def write_header(self, teacher: str) -> None:
        """Record which teacher and prompt the file's records are for (``<file>.json``)."""
        self.path.with_suffix(".json").write_text(
            json.dumps({"teacher": teacher, "teacher_digest": self.teacher_digest, "prompt": self.prompt}, indent=2)
        )
