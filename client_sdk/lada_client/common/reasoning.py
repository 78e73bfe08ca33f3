"""The text format of a reasoning example, shared by devices and the coordinator.

Small LMs are trained on ``format_prompt(q) + format_target(r)`` and the LLM is prompted with the
same prompt, so both sides must agree byte for byte; keeping the format in one stdlib-only module
is what guarantees that. Answers are graded by what follows the last "The answer is" (or, for
teachers that write LaTeX, the last ``\boxed{...}``, whichever comes later), which lets a rationale
contain intermediate numbers (and even a restated answer) without confusing the grader. Numbers
compare numerically ("8.0" = "8", "1,200" = "1200"); other answers (a fraction "3/4", a time
"00:34:28") compare as text, case and surrounding spaces and punctuation aside.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "ANSWER_PHRASE",
    "answer_target",
    "extract_answer",
    "format_prompt",
    "format_target",
    "is_correct",
    "normalize_answer",
]

ANSWER_PHRASE = "The answer is"

# A signed integer or decimal, optionally with thousands separators ("1,234.5") or a "$" sign.
_NUMBER = re.compile(r"\s*\$?\s*(-?\s*(?:\d[\d,]*)?(?:\.\d+)?)")
# The rest of the sentence after the answer phrase: up to a newline, or a period ending it.
_TEXT = re.compile(r"\s*([^\n]*?)\s*(?:\.\s|\.$|\n|$)")
_BOXED = "\\boxed{"


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


def answer_target(answer: str) -> str:
    """The target of a sample that has an answer but no rationale (answer-only private data)."""
    return f"{ANSWER_PHRASE} {answer.strip()}."


def _boxed(text: str) -> tuple[int, str] | None:
    """Position and content of the last ``\\boxed{...}`` (braces balanced), if any."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return start, text[i:j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of ``text``: after the last "The answer is" or in the last ``\\boxed{}``,
    whichever comes later; a number without commas, or the answer's text; None if there is none."""
    position = text.rfind(ANSWER_PHRASE)
    boxed = _boxed(text)
    if boxed is not None and boxed[0] > position:
        return _clean(boxed[1])
    if position < 0:
        return None
    after = position + len(ANSWER_PHRASE)
    match = _NUMBER.match(text, after)
    if match is not None and any(ch.isdigit() for ch in match.group(1)):
        following = text[match.end() : match.end() + 1]
        if not (following.isalnum() or following in "/:^"):  # "8", "8 apples", "-2.5." but not "3/4", "00:34"
            return match.group(1).replace(" ", "").replace(",", "")
    rest = _TEXT.match(text, after)
    return _clean(rest.group(1)) if rest else None


def _clean(answer: str) -> str | None:
    answer = answer.strip().strip("$").strip().rstrip(".").strip()
    if not answer:
        return None
    number = answer.replace(",", "").replace(" ", "")
    if normalize_answer(number) is not None:
        return number
    return answer


def _text_key(answer: str) -> str:
    return " ".join(answer.strip().strip("$").rstrip(".").lower().split())


def is_correct(text: str, gold: str) -> bool:
    """Whether the answer extracted from ``text`` equals ``gold``: numerically when both are
    numbers, else as normalised text."""
    predicted = extract_answer(text)
    if predicted is None:
        return False
    expected, got = normalize_answer(gold), normalize_answer(predicted)
    if expected is not None or got is not None:
        return expected is not None and got == expected
    return _text_key(predicted) == _text_key(gold)
