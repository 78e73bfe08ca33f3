"""One reasoning problem as every part of LaDa passes it around: the :class:`Sample` record.

A device's private data (a user's JSONL, :mod:`lada_client.data.user_files`, or a federation
shard, :mod:`lada_client.data.federation`), the public pool and the teacher's paths are all lists
of samples; ``to_dict``/``from_dict`` is their one-JSON-object-per-line form on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lada_client.common.reasoning import answer_target

__all__ = ["Sample"]


@dataclass(frozen=True)
class Sample:
    """One problem: the question, its worked rationale and the gold answer.

    ``rationale`` may be empty: a user's private data often holds questions with answers only, and
    the reasoning is what the teacher contributes. :attr:`target` is then the bare answer sentence.
    """

    sample_id: str
    domain: str
    question: str
    rationale: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def target(self) -> str:
        """What a model is trained to write after the prompt: the rationale, or the answer alone."""
        return self.rationale or answer_target(self.answer)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        """Inverse of :meth:`to_dict`; rejects records with missing or non-string fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"sample record must be a JSON object, got {type(data).__name__}")
        values: dict[str, str] = {}
        for field in ("sample_id", "domain", "question", "rationale", "answer"):
            value = data.get(field)
            if not isinstance(value, str):
                raise ValueError(f"sample field {field!r} must be a string, got {value!r}")
            values[field] = value
        return cls(**values)
