"""The wire model's check of a feature upload's values: one numpy pass over every row, with the
accept/refuse decisions and the messages of the value-by-value check it replaced."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from pydantic import ValidationError

from lada_client.common.wire import FEATURE_ABS_MAX, FeatureUpload, _finite


def _value_by_value(rows: list[list[float]]) -> list[list[float]]:
    """The check before it was vectorised: each row in turn through ``_finite``."""
    for row in rows:
        _finite(row, "features", FEATURE_ABS_MAX)
    return rows


def _outcome(check, rows) -> str:
    try:
        check(rows)
    except ValueError as exc:
        return str(exc)
    return "ok"


def _upload(features) -> FeatureUpload:
    return FeatureUpload(round=1, feature_names=["a"], sample_ids=[], features=features)


big, inf, nan = FEATURE_ABS_MAX, math.inf, math.nan
CASES = {
    "empty": [],
    "empty rows": [[], [], []],
    "one value": [[1.5]],
    "ragged": [[1.0], [2.0, 3.0, 4.0], [], [5.0]],
    "at the bound": [[big, -big, 0.0, -0.0]],
    "just above": [[1.0], [big * (1 + 1e-15)]],
    "just below minus": [[-big * (1 + 1e-15)]],
    "huge": [[1e300, 1.0]],
    "beyond float32": [[0.0, 1e39]],
    "tiny": [[5e-324, -1e-310, 1e-45]],
    "nan": [[1.0, nan]],
    "inf": [[inf]],
    "minus inf": [[0.0], [-inf]],
    "nan after huge": [[2e6, nan]],
    "huge after nan": [[nan, 2e6]],
    "inf in a later row": [[1.0, 2.0], [3.0], [inf, 7e6]],
    "big in a later row after an empty one": [[1.0], [], [-3e6]],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_vectorised_check_decides_and_says_what_the_value_by_value_check_did(name):
    rows = CASES[name]
    expected = _outcome(_value_by_value, rows)
    assert _outcome(FeatureUpload._check_features, rows) == expected
    try:
        assert _upload(rows).features == rows
        got = "ok"
    except ValidationError as exc:
        (error,) = exc.errors()
        got = str(error["ctx"]["error"])
    assert got == expected


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ([[True, False, 1]], "ok"),  # bools and ints are numbers to pydantic: 1.0, 0.0, 1.0
        ([[10**6, -(10**6)]], "ok"),
        ([[10**6 + 1]], "features must lie within ±1e+06 (got 1e+06)"),
        ([[2**70]], "features must lie within ±1e+06 (got 1.18059e+21)"),
        ([["1.5", "nan"]], "features must be finite numbers (got NaN or inf)"),
        ([["-inf"]], "features must be finite numbers (got NaN or inf)"),
    ],
)
def test_bools_ints_and_strings_are_checked_as_the_floats_pydantic_makes_of_them(features, expected):
    as_floats = [[float(v) for v in row] for row in features]
    assert _outcome(_value_by_value, as_floats) == expected
    try:
        _upload(features)
        got = "ok"
    except ValidationError as exc:
        got = str(exc.errors()[0]["ctx"]["error"])
    assert got == expected


def test_json_uploads_are_refused_with_the_same_message():
    """What the coordinator parses: JSON numbers beyond float64 become inf, and are refused."""
    for text, message in (
        ("[[1e400]]", "finite numbers"),
        ("[[1.0, 2.0], [-1e400]]", "finite numbers"),
        ("[[1.0, 2000000.5]]", "within ±1e+06 (got 2e+06)"),
        ("[[1.0, 2.0], [3.0, 4.0]]", None),
    ):
        raw = json.dumps({"round": 1, "feature_names": ["a", "b"], "sample_ids": [], "features": "X"})
        raw = raw.replace('"X"', text)
        if message is None:
            assert FeatureUpload.model_validate_json(raw).features == [[1.0, 2.0], [3.0, 4.0]]
        else:
            with pytest.raises(ValidationError, match=re.escape(message)):
                FeatureUpload.model_validate_json(raw)


def test_random_rows_get_the_same_decisions_and_messages():
    rng = np.random.default_rng(0)
    specials = [math.nan, math.inf, -math.inf, 2e6, -1e7, 1e6, -1e6, 1e300, 0.0]
    for _ in range(300):
        rows = [rng.normal(0.0, 1e5, rng.integers(0, 6)).tolist() for _ in range(rng.integers(0, 8))]
        for _ in range(rng.integers(0, 3)):
            filled = [i for i, row in enumerate(rows) if row]
            if filled:
                i = filled[rng.integers(len(filled))]
                rows[i][rng.integers(len(rows[i]))] = specials[rng.integers(len(specials))]
        assert _outcome(FeatureUpload._check_features, rows) == _outcome(_value_by_value, rows), rows
