from __future__ import annotations

import numpy as np
import pytest

from lada_client.common.reasoning import format_prompt, format_target
from lada_client.common.wire import Candidate
from lada_client.data.federation import load_client
from lada_client.scoring.features import FEATURE_NAMES, learnability_features, perplexity
from lada_client.scoring.onnx_slm import ModelLoadError, OnnxSLM


@pytest.fixture(scope="module")
def client0(tiny_world):
    return load_client(tiny_world["data"], "client0")


def test_onnx_logprobs_match_torch(tiny_world, client0):
    torch = pytest.importorskip("torch")
    from lada_client.models.checkpoint import load_causal_lm
    from lada_client.models.encoding import encode_pairs
    from lada_client.training.losses import token_logprobs

    samples = client0.train[:12]
    prompts = [format_prompt(s.question) for s in samples]
    targets = [format_target(s.rationale) for s in samples]
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    onnx_lps = slm.completion_logprobs(prompts, targets, batch_size=5)  # mixed lengths -> padding
    model, tok = load_causal_lm(tiny_world["client0"] / "base")
    enc = encode_pairs(tok, prompts, targets, 256)
    with torch.no_grad():
        ref = token_logprobs(
            model.eval(), torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
        ).numpy()
    for b, lp in enumerate(onnx_lps):
        expected = ref[b][enc.completion_mask[b] > 0]
        assert lp.shape == expected.shape
        np.testing.assert_allclose(lp, expected, atol=1e-4)


def test_greedy_generation_matches_torch_argmax(tiny_world, client0):
    torch = pytest.importorskip("torch")
    from lada_client.models.checkpoint import load_causal_lm

    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    prompt = format_prompt(client0.test[0].question)
    text = slm.generate([prompt], max_new_tokens=8)[0]
    model, tok = load_causal_lm(tiny_world["client0"] / "base")
    ids = torch.tensor([[1, *tok.encode(prompt, add_special_tokens=False)]])
    out = model.eval().generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=[2, *tok.encode("\n", add_special_tokens=False)],
    )
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
    assert text == expected


def test_features_shape_and_meaning(tiny_world, client0):
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    cands = [
        Candidate(sample_id=s.sample_id, question=s.question, path=s.rationale, llm_logprob=-5.0, llm_tokens=10)
        for s in client0.train[:6]
    ]
    z = learnability_features(slm, cands)
    assert z.shape == (6, len(FEATURE_NAMES))
    assert np.isfinite(z).all()
    assert (z[:, FEATURE_NAMES.index("slm_path_nll")] > 0).all()
    lps = slm.completion_logprobs([format_prompt(c.question) for c in cands], [format_target(c.path) for c in cands])
    assert perplexity(lps) == pytest.approx(np.mean(np.exp(z[:, 0])), rel=1e-9)
    np.testing.assert_allclose(z[:, FEATURE_NAMES.index("logp_gap")], -0.5 + z[:, 0], rtol=1e-9)
    with pytest.raises(ValueError, match="unknown feature"):
        learnability_features(slm, cands, ["nope"])


def test_bad_model_files(tmp_path, tiny_world):
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxSLM(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx file")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        OnnxSLM(junk, tokenizer_path=tiny_world["tokenizer"] / "tokenizer.json")


def test_scoring_graph_has_head_and_kv_cache(tiny_world):
    from lada_client.models.export import HEAD_INPUTS, SCORING_GRAPH_VERSION, scoring_graph_version
    from lada_client.scoring import onnx_slm

    assert onnx_slm._HEAD_INPUTS == HEAD_INPUTS
    path = tiny_world["client0"] / "onnx" / "model.onnx"
    assert scoring_graph_version(path) == SCORING_GRAPH_VERSION
    slm = OnnxSLM(path)
    assert slm._head and slm._past and slm.kv_cache


def test_kv_cache_step_matches_full_prefix(tiny_world, client0):
    """Left-padded prefill + one token per step gives the distributions of a full re-run."""
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    rows = [slm.tokenizer.encode(format_prompt(s.question), add_special_tokens=False).ids for s in client0.test[:3]]
    rows = [[1, *r[: 10 + 7 * i]] for i, r in enumerate(rows)]  # different lengths
    extra = [[5, 9, 17], [3, 3, 8], [40, 2, 11]]
    n, width = len(rows), max(len(r) for r in rows)
    ids = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :], mask[b, width - len(r) :] = r, 1
    pos = np.maximum(mask.cumsum(1) - 1, 0)
    feeds = {**slm._head_feeds(ids, mask, pos, np.full(n, width - 1)), **slm._empty_past(n)}
    names = [present for _, present, _, _ in slm._past]
    pos = pos[:, -1:]
    for step in range(len(extra[0]) + 1):
        next_lp, *present = slm._session.run(["next_logprobs", *names], feeds)
        full = []
        for b, r in enumerate(rows):
            seq = np.array([r + extra[b][:step]], dtype=np.int64)
            one = slm._head_feeds(seq, np.ones_like(seq), np.arange(seq.shape[1])[None], np.array([seq.shape[1] - 1]))
            full.append(slm._session.run(["next_logprobs"], {**one, **slm._empty_past(1)})[0][0])
        np.testing.assert_allclose(next_lp, np.stack(full), atol=1e-4)
        if step == len(extra[0]):
            break
        mask = np.concatenate([mask, np.ones((n, 1), dtype=np.int64)], axis=1)
        pos = pos + 1
        step_ids = np.array([[e[step]] for e in extra])
        feeds = {
            **slm._head_feeds(step_ids, mask, pos, np.zeros(n)),
            **{name: p for (name, _, _, _), p in zip(slm._past, present)},
        }


def test_padding_does_not_change_scores(tiny_world, client0):
    """Rows scored alone and in a padded batch (where the graph skips the padding) agree."""
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    samples = client0.train[:7]
    prompts = [format_prompt(s.question) for s in samples]
    targets = [format_target(s.rationale) for s in samples]
    batched = slm.completion_logprobs(prompts, targets, batch_size=7)
    alone = slm.completion_logprobs(prompts, targets, batch_size=1)
    for a, b in zip(batched, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cached_generation_equals_full_prefix_generation(tiny_world, client0):
    prompts = [format_prompt(s.question) for s in client0.test[:5]]
    cached = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    full = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    full.kv_cache = False
    assert cached.generate(prompts, max_new_tokens=6, batch_size=3) == full.generate(
        prompts, max_new_tokens=6, batch_size=3
    )
    assert cached.generate(prompts[:1], max_new_tokens=6) == cached.generate(prompts, max_new_tokens=6)[:1]
    sampled = cached.generate(prompts, max_new_tokens=6, temperature=1.0, seed=3)
    assert sampled == cached.generate(prompts, max_new_tokens=6, temperature=1.0, seed=3)
    assert len(sampled) == len(prompts)


def test_a_batch_over_the_logits_budget_is_split_and_scores_the_same(tiny_world, client0):
    """A large vocabulary (Gemma 3's 262k) makes 16 paths' log-probs gigabytes: batches are halved
    until scored tokens x vocabulary x 4 bytes fits the budget, with the same scores."""
    samples = client0.train[:12]
    prompts = [format_prompt(s.question) for s in samples]
    targets = [format_target(s.rationale) for s in samples]
    whole = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    budget = whole.vocab_size * 4 * 40  # about two pairs' completion tokens
    tight = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx", logits_budget_bytes=budget)
    seen: list[tuple[int, int]] = []  # (pairs, scored tokens) of each graph call
    score = tight._score_batch

    def recording(batch):
        seen.append((batch.input_ids.shape[0], int((batch.completion_mask > 0).sum())))
        return score(batch)

    tight._score_batch = recording  # the real scoring, observed
    expected = whole.completion_logprobs(prompts, targets, batch_size=12)
    got = tight.completion_logprobs(prompts, targets, batch_size=12)
    assert len(seen) > 2 and all(rows * tight.vocab_size * 4 <= budget or pairs == 1 for pairs, rows in seen)
    assert sum(pairs for pairs, _ in seen) == len(prompts)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-5)
