"""Teacher paths computed ahead of time: stored by content, resumable, and served to rounds."""

from __future__ import annotations

import pytest

from lada_client.data.samples import Sample
from lada_coordinator.llm.llamacpp import cut_after_answer
from lada_coordinator.llm.paths import PathRecord, PathStore, path_key


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s{i}", "add", f"What is {i} + 1?", "", str(i + 1)) for i in range(n)]


def _record(store: PathStore, s: Sample, correct: bool = True) -> PathRecord:
    path = f"{s.question[8:-1]} = {s.answer}. The answer is {s.answer}." if correct else ""
    return PathRecord(store.key(s), s.sample_id, path, -3.0 if correct else 0.0, 9 if correct else 0, correct)


def test_store_keys_by_teacher_prompt_and_question_and_resumes(tmp_path):
    samples = _samples(5)
    store = PathStore(tmp_path / "paths.jsonl", "digest-a", "prompt")
    store.write_header("teacher.gguf")
    store.add([_record(store, s) for s in samples[:3]])
    with open(tmp_path / "paths.jsonl", "a") as fh:
        fh.write('{"key": "cut by a cra')  # a crash mid-line
    again = PathStore.open(tmp_path / "paths.jsonl")
    assert (
        len(again) == 3
        and again.missing(samples) == samples[3:]
        and again.get(samples[0]).path.endswith("The answer is 1.")
    )
    assert PathStore(tmp_path / "paths.jsonl", "digest-b", "prompt").missing(samples) == samples  # another teacher
    assert PathStore(tmp_path / "paths.jsonl", "digest-a", "other prompt").missing(samples) == samples
    assert path_key("d", "p", "q") != path_key("d", "p", "q2")
    with pytest.raises(ValueError, match="header"):
        PathStore.open(tmp_path / "none.jsonl")


def test_teachers_repeated_answer_sentences_are_cut_after_the_first():
    assert (
        cut_after_answer(" 2 + 3 = 5. The answer is 5. The answer is 5. The answer is") == "2 + 3 = 5. The answer is 5."
    )
    assert cut_after_answer("x = 2.5. The answer is 2.5. Q: next") == "x = 2.5. The answer is 2.5."
    assert cut_after_answer("no answer sentence") == "no answer sentence"


def test_rounds_draw_candidates_with_verified_stored_paths_and_run_no_llm(tmp_path, tiny_world):
    from lada_client.data.federation import load_public
    from lada_coordinator.config import CoordinatorConfig
    from lada_coordinator.server.run import build

    public = load_public(tiny_world["data"])
    store = PathStore(tmp_path / "paths.jsonl", "digest", "prompt")
    store.write_header("t")
    store.add([_record(store, s, correct=i % 3 != 0) for i, s in enumerate(public[:120])])  # a third unverified
    config = CoordinatorConfig(
        db_path=tmp_path / "c.sqlite",
        state_dir=tmp_path / "state",
        llm_dir=None,
        public_data=tiny_world["data"],
        teacher_paths=tmp_path / "paths.jsonl",
        train_llm=False,
        candidates_per_round=20,
        offer_questions=4,
    )
    _, engine, db = build(config)
    engine._open(1)
    info, paths = db.round_info(1)
    verified = {s.sample_id: r for s in public if (r := store.get(s)) and r.correct}
    assert len(info.candidates) == 20 and all(c.sample_id in verified for c in info.candidates)
    assert all(c.path == verified[c.sample_id].path and c.llm_tokens == 9 for c in info.candidates)
    assert len(info.offer_questions) == 4 and paths.path_stats["store"] == 20
    assert engine._llm is None  # no LLM was loaded
    db.close()
    with pytest.raises(ValueError, match="llm_dir is required"):
        CoordinatorConfig(db_path=tmp_path / "c", state_dir=tmp_path, llm_dir=None, public_data=tmp_path)


def test_a_warm_path_store_needs_no_llama_cpp(tmp_path, monkeypatch):
    """Every public question's path cached under the GGUF file's digest: the federation set-up
    serves them without loading (or having) llama.cpp, so a warm benchmark skips its build."""
    import sys

    from lada_coordinator.federation import FederationSettings, LogReporter, _teacher_paths
    from lada_coordinator.llm.llamacpp import DEFAULT_PROMPT, file_digest

    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"not loaded: only hashed")
    samples = _samples(4)
    out = tmp_path / "paths.jsonl"
    store = PathStore(out, file_digest(gguf), DEFAULT_PROMPT)
    store.add([_record(store, s) for s in samples])
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # importing it fails
    settings = FederationSettings(workdir=tmp_path / "w", teacher_gguf=gguf, teacher_cache=out)
    assert _teacher_paths(settings, gguf, samples, LogReporter()) == out
    assert PathStore.open(out).missing(samples) == []  # the header names the same teacher and prompt
    with pytest.raises(ImportError, match="llama-cpp-python"):  # one missing path does need the engine
        _teacher_paths(settings, gguf, [*samples, *_samples(6)[4:]], LogReporter())
