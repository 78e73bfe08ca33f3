"""A user's own data as JSON Lines: private shards for devices and a public pool for the coordinator.

One JSON object per line::

    {"question": "Tom has 3 boxes of 12 eggs. How many eggs?", "answer": "36"}
    {"question": "...", "answer": "...", "rationale": "3 * 12 = 36. The answer is 36.", "domain": "eggs", "id": "q17"}

``question`` and ``answer`` are required. ``rationale`` is optional: private data with answers only
is the expected case (the reasoning comes from the teacher); a rationale, when given, must end in a
gradable answer ("The answer is ..."). ``domain`` defaults to the file's own label, ``id`` to a hash
of the question. Answers are graded numerically when they are numbers, else as normalised text.
Blank lines and lines starting with ``#`` are skipped. Every problem is reported with its file and
line number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lada_client.common.reasoning import extract_answer, is_correct
from lada_client.data.federation import ClientData, FederationData
from lada_client.data.samples import Sample

__all__ = ["make_user_federation", "read_samples"]

_FIELDS = {"question", "answer", "rationale", "domain", "id"}
MAX_QUESTION_CHARS = 4096  # what the wire carries for a public question


def read_samples(path: Path, domain: str | None = None) -> list[Sample]:
    """Read and check one JSONL file; ``domain`` is the default for lines without one."""
    path = Path(path)
    label = domain or path.stem
    out: list[Sample] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: each line must be a JSON object")
        unknown = set(record) - _FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; fields are {sorted(_FIELDS)}")
        values = {}
        for field in _FIELDS:
            value = record.get(field)
            if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int, float))):
                raise ValueError(f"{where}: {field!r} must be a string")
            values[field] = "" if value is None else str(value).strip()
        if not values["question"] or not values["answer"]:
            raise ValueError(f"{where}: 'question' and 'answer' are required and must not be empty")
        if len(values["question"]) > MAX_QUESTION_CHARS:
            raise ValueError(f"{where}: the question is over {MAX_QUESTION_CHARS} characters")
        rationale = values["rationale"]
        if rationale and not is_correct(rationale, values["answer"]):
            found = extract_answer(rationale)
            raise ValueError(
                f"{where}: the rationale must end in the answer ('The answer is {values['answer']}.'); "
                f"it gives {found!r}"
            )
        sid = values["id"] or hashlib.sha1(values["question"].encode()).hexdigest()[:12]
        if sid in seen:
            raise ValueError(f"{where}: id {sid!r} appears twice (or the same question does)")
        seen.add(sid)
        out.append(
            Sample(
                sample_id=sid,
                domain=values["domain"] or label,
                question=values["question"],
                rationale=rationale,
                answer=values["answer"],
            )
        )
    if not out:
        raise ValueError(f"{path} holds no samples")
    return out


def make_user_federation(
    public: Path, clients: Mapping[str, tuple[Path, Path | None]], test_fraction: float = 0.2, seed: int = 0
) -> FederationData:
    """A federation from files: ``clients`` maps a client name to (train file, test file or None);
    without a test file, ``test_fraction`` of the train file (a seeded shuffle) becomes its test split.
    Questions shared between splits are refused, so a test score never measures recall."""
    import numpy as np

    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    pool = read_samples(public, "public")
    shards: list[ClientData] = []
    for name, (train_path, test_path) in clients.items():
        train = read_samples(train_path, name)
        if test_path is not None:
            test = read_samples(test_path, name)
        else:
            order = np.random.default_rng([seed, len(shards)]).permutation(len(train))
            cut = max(1, round(test_fraction * len(train)))
            test, train = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
        domains = sorted({s.domain for s in train})
        shards.append(
            ClientData(name=name, domain=domains[0] if len(domains) == 1 else "mixed", train=train, test=test)
        )
    _no_overlap(pool, shards)
    return FederationData(clients=shards, public=pool, seed=seed)


def _no_overlap(public: Sequence[Sample], clients: Sequence[ClientData]) -> None:
    owner: dict[str, str] = {}
    for label, samples in [
        ("public", public),
        *((f"{c.name} train", c.train) for c in clients),
        *((f"{c.name} test", c.test) for c in clients),
    ]:
        for s in samples:
            key = " ".join(s.question.lower().split())
            if key in owner and owner[key] != label:
                raise ValueError(f"a question is in both {owner[key]} and {label}: {s.question[:80]!r}")
            owner[key] = label
