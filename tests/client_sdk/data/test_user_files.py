"""A user's own data as JSON Lines: clear errors naming file and line, optional fields, no overlap."""

from __future__ import annotations

import json

import pytest

from lada_client.data.federation import FederationData
from lada_client.data.user_files import make_user_federation, read_samples


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_answers_only_and_optional_fields(tmp_path):
    f = _write(
        tmp_path / "eggs.jsonl",
        [
            "# a comment, then a blank line",
            "",
            {"question": "Tom has 3 boxes of 12 eggs. How many eggs?", "answer": 36},
            {
                "question": "Half of 10?",
                "answer": "5",
                "rationale": "10 / 2 = 5. The answer is 5.",
                "domain": "halves",
                "id": "h1",
            },
        ],
    )
    a, b = read_samples(f)
    assert (a.domain, a.rationale, a.answer, a.target) == ("eggs", "", "36", "The answer is 36.")
    assert (b.sample_id, b.domain, b.target) == ("h1", "halves", "10 / 2 = 5. The answer is 5.")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "JSON object"),
        ('{"question": "q"}', "required"),
        ('{"question": "q", "answer": "1", "extra": 1}', "unknown field"),
        ('{"question": "q", "answer": "1", "rationale": "so. The answer is 2."}', "must end in the answer"),
        ('{"question": ["q"], "answer": "1"}', "must be a string"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    f = _write(tmp_path / "bad.jsonl", ['{"question": "fine", "answer": "1"}', line])
    with pytest.raises(ValueError, match=message) as exc:
        read_samples(f)
    assert f"{f}:2" in str(exc.value)


def test_federation_from_files_splits_and_refuses_overlap(tmp_path):
    public = _write(tmp_path / "public.jsonl", [{"question": f"public {i}?", "answer": str(i)} for i in range(6)])
    mine = _write(tmp_path / "mine.jsonl", [{"question": f"mine {i}?", "answer": str(i)} for i in range(10)])
    fed = make_user_federation(public, {"phone": (mine, None)}, test_fraction=0.2)
    (phone,) = fed.clients
    assert (len(phone.train), len(phone.test), phone.domain) == (8, 2, "phone")
    fed.save(tmp_path / "fed")
    assert FederationData.load(tmp_path / "fed").client("phone").test == phone.test
    leaky = _write(
        tmp_path / "leaky.jsonl", [{"question": "public 1?", "answer": "1"}, {"question": "x?", "answer": "2"}]
    )
    with pytest.raises(ValueError, match="in both public and"):
        make_user_federation(public, {"phone": (leaky, None)}, test_fraction=0.5)
