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
    from lada_client.models.encoding import encode_pairs
    from lada_client.models.factory import load_causal_lm
    from lada_client.training.losses import token_logprobs

    samples = client0.train[:12]
    prompts = [format_prompt(s.question) for s in samples]
    targets = [format_target(s.rationale) for s in samples]
    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    onnx_lps = slm.completion_logprobs(prompts, targets, batch_size=5)  # mixed lengths -> padding
    model, tok = load_causal_lm(tiny_world["client0"] / "base")
    enc = encode_pairs(tok, prompts, targets, 256)
    with torch.no_grad():
        ref = token_logprobs(model.eval(), torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)).numpy()
    for b, lp in enumerate(onnx_lps):
        expected = ref[b][enc.completion_mask[b] > 0]
        assert lp.shape == expected.shape
        np.testing.assert_allclose(lp, expected, atol=1e-4)


def test_greedy_generation_matches_torch_argmax(tiny_world, client0):
    torch = pytest.importorskip("torch")
    from lada_client.models.factory import load_causal_lm

    slm = OnnxSLM(tiny_world["client0"] / "onnx" / "model.onnx")
    prompt = format_prompt(client0.test[0].question)
    text = slm.generate([prompt], max_new_tokens=8)[0]
    model, tok = load_causal_lm(tiny_world["client0"] / "base")
    ids = torch.tensor([[1] + tok.encode(prompt, add_special_tokens=False)])
    out = model.eval().generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=[2, *tok.encode("\n", add_special_tokens=False)])
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
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
