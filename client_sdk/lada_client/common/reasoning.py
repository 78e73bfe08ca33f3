"""The text format of a reasoning example, shared by devices and the coordinator.

Small LMs are trained on ``format_prompt(q) + format_target(r)`` and the LLM is prompted with the
same prompt, so both sides must agree byte for byte; keeping the format in one stdlib-only module
is what guarantees that. Answers are graded by the number after the last "The answer is", which
lets a rationale contain intermediate numbers (and even a restated answer) without confusing the
grader.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "ANSWER_PHRASE",
    "extract_answer",
    "format_prompt",
    "format_target",
    "is_correct",
    "normalize_answer",
]

ANSWER_PHRASE = "The answer is"

# A signed integer or decimal, optionally with thousands separators ("1,234.5") or a "$" sign.
_NUMBER = re.compile(r"\s*\$?\s*(-?\s*(?:\d[\d,]*)?(?:\.\d+)?)")


def format_prompt(question: str) -> str:
    """Prompt a model sees; the completion starts right after ``A:``."""
    return f"Q: {question}\nA:"


def format_target(rationale: str) -> str:
    """Completion a model is trained to produce after :func:`format_prompt`."""
    return " " + rationale


def normalize_answer(answer: str) -> str | None:
    """Canonical form of a number ("8.0" -> "8", " 1,200. " -> "1200"); None if not numeric."""
    cleaned = answer.strip().rstrip(".").replace(",", "").replace(" ", "").replace("$", "")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """Number after the last "The answer is" in ``text`` (no commas or trailing period), or None."""
    position = text.rfind(ANSWER_PHRASE)
    if position < 0:
        return None
    match = _NUMBER.match(text, position + len(ANSWER_PHRASE))
    if match is None:
        return None
    number = match.group(1).replace(" ", "").replace(",", "")
    if not any(ch.isdigit() for ch in number):
        return None
    return number


def is_correct(text: str, gold: str) -> bool:
    """Whether the answer extracted from ``text`` equals ``gold`` numerically."""
    predicted = extract_answer(text)
    if predicted is None:
        return False
    expected = normalize_answer(gold)
    return expected is not None and normalize_answer(predicted) == expected
