from __future__ import annotations

import pytest

from lada_client.common.reasoning import (
    extract_answer,
    format_prompt,
    format_target,
    is_correct,
    normalize_answer,
)


def test_prompt_and_target_concatenate_into_one_example() -> None:
    prompt = format_prompt("How many?")
    target = format_target("3 + 5 = 8. The answer is 8.")
    assert prompt == "Q: How many?\nA:"
    assert prompt + target == "Q: How many?\nA: 3 + 5 = 8. The answer is 8."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 5 = 8. The answer is 8.", "8"),
        ("The answer is 8", "8"),
        ("2 - 5 = -3. The answer is -3.", "-3"),
        ("The answer is 2.5.", "2.5"),
        ("The answer is 1,200.", "1200"),
        ("The answer is $ 12.", "12"),
        ("The answer is 4. Wait. 3 + 2 = 5. The answer is 5.", "5"),
        ("The answer is 7. The answer is", None),
        ("3 + 5 = 8.", None),
        ("The answer is unknown.", "unknown"),  # a text answer: it grades as text
        ("The answer is 8 apples.", "8"),
        ("The answer is 3/4.", "3/4"),
        ("So it took 00:34:28. The answer is 00:34:28.", "00:34:28"),
        ("Adding up, we get \\boxed{42}.", "42"),
        ("The answer is 7. Checking: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{5} so The answer is 6.", "6"),  # the later one counts
        ("\\boxed{1,234}", "1234"),
        ("The answer is", None),
        ("", None),
    ],
)
def test_extract_answer_reads_the_last_answer_phrase(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("8.0", "8"), (" 1,200. ", "1200"), ("-0", "0"), ("2.50", "2.5"), ("abc", None), ("", None)],
)
def test_normalize_answer(raw: str, expected: str | None) -> None:
    assert normalize_answer(raw) == expected


def test_is_correct_compares_numbers_not_strings() -> None:
    assert is_correct("The answer is 8.0.", "8")
    assert is_correct("The answer is 1,000.", " 1000 ")
    assert is_correct("x = 3. The answer is -3.", "-3")
    assert not is_correct("The answer is 9.", "8")
    assert not is_correct("The answer is 80.", "8")
    assert not is_correct("no answer here", "8")
    assert not is_correct("The answer is 8.", "eight")
    assert not is_correct("The answer is unknown.", "8")


def test_is_correct_compares_other_answers_as_text() -> None:
    assert is_correct("The answer is 3/4.", "3/4")
    assert is_correct("Reduced: \\boxed{138/583}", "138/583")
    assert is_correct("The answer is 00:34:28.", " 00:34:28 ")
    assert is_correct("The answer is True.", "true")
    assert not is_correct("The answer is 3/4.", "6/8")
    assert is_correct("The answer is \\boxed{288}.", "288")
