"""Export an SLM to the ONNX *scoring graph* the client runs with onnxruntime.

The decoder is exported with optimum's exporter (no KV cache: scoring is one forward pass over
whole sequences). We then append the log-prob head to the graph, so onnxruntime returns, instead
of ``[B, T, V]`` logits, only

* ``token_logprobs`` ``[B, T-1]``: ``log p(x_t | x_<t)`` for every position (what scoring needs),
* ``next_logprobs`` ``[B, V]``: the log-distribution after the last real token (what generation
  needs).

Doing the log-softmax and the gather in-graph keeps the client free of torch, and moves ``T-1``
floats per row across the runtime boundary instead of ``T*V``.

Needs the ``export`` extra (torch, transformers, optimum-onnx); the client never exports.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from lada_client.models.encoding import SpecialTokens

log = logging.getLogger(__name__)

#: what a scoring model directory holds (the client moves them together)
SCORING_FILES = ("model.onnx", "tokenizer.json", "special_tokens.json")

OPSET = 18


def add_logprob_head(model_path: Path, out_path: Path) -> Path:
    """Replace the ``logits`` output of an exported decoder with the log-prob outputs."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    if [o.name for o in graph.output][:1] != ["logits"]:
        raise ValueError(f"{model_path} has no 'logits' output; is it a decoder export?")
    i64 = lambda name, vals: helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals)  # noqa: E731
    graph.initializer.extend(
        [
            i64("lada_zero", [0]),
            i64("lada_one", [1]),
            i64("lada_minus_one", [-1]),
            i64("lada_axis1", [1]),
            i64("lada_big", [2**62]),
            i64("lada_axis_last", [-1]),
        ]
    )
    nodes = [
        helper.make_node("LogSoftmax", ["logits"], ["lada_lp"], axis=-1),
        # next-token log-probs of positions 0..T-2, scored against ids 1..T-1
        helper.make_node("Slice", ["lada_lp", "lada_zero", "lada_minus_one", "lada_axis1"], ["lada_lp_prev"]),
        helper.make_node("Slice", ["input_ids", "lada_one", "lada_big", "lada_axis1"], ["lada_targets"]),
        helper.make_node("Unsqueeze", ["lada_targets", "lada_axis_last"], ["lada_targets3"]),
        helper.make_node("GatherElements", ["lada_lp_prev", "lada_targets3"], ["lada_tok3"], axis=2),
        helper.make_node("Squeeze", ["lada_tok3", "lada_axis_last"], ["token_logprobs"]),
        # distribution after the last attended position (right padding)
        helper.make_node("ReduceSum", ["attention_mask", "lada_axis1"], ["lada_len"], keepdims=1),
        helper.make_node("Sub", ["lada_len", "lada_one"], ["lada_last"]),
        helper.make_node("Unsqueeze", ["lada_last", "lada_axis_last"], ["lada_last3"]),
        helper.make_node("Shape", ["lada_lp"], ["lada_shape"]),
        helper.make_node("Slice", ["lada_shape", "lada_minus_one", "lada_big", "lada_zero"], ["lada_vocab"]),
        helper.make_node("Concat", ["lada_one", "lada_one", "lada_vocab"], ["lada_expand_shape"], axis=0),
        helper.make_node("Expand", ["lada_last3", "lada_expand_shape"], ["lada_last_idx"]),
        helper.make_node("GatherElements", ["lada_lp", "lada_last_idx"], ["lada_next3"], axis=1),
        helper.make_node("Squeeze", ["lada_next3", "lada_axis1"], ["next_logprobs"]),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("token_logprobs", TensorProto.FLOAT, ["batch", "targets"]),
            helper.make_tensor_value_info("next_logprobs", TensorProto.FLOAT, ["batch", "vocab"]),
        ]
    )
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def special_tokens_of(model_dir: Path) -> SpecialTokens:
    from transformers import AutoConfig

    return SpecialTokens.from_model_config(AutoConfig.from_pretrained(str(model_dir)))


def export_scoring_model(model_dir: Path, out_path: Path) -> Path:
    """Export ``model_dir`` (a HF checkpoint, adapters merged) to an ONNX scoring file, with the
    tokenizer and special-token ids beside it (see :data:`SCORING_FILES`)."""
    from optimum.exporters.onnx import main_export

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lada-export-") as tmp:
        main_export(
            str(model_dir),
            output=tmp,
            task="text-generation",
            opset=OPSET,
            no_post_process=True,
            do_validation=False,
            device="cpu",
        )
        add_logprob_head(Path(tmp) / "model.onnx", out_path)
        shutil.copy(Path(model_dir) / "tokenizer.json", out_path.parent / "tokenizer.json")
        special_tokens_of(Path(model_dir)).save(out_path.parent)
    log.info("exported %s -> %s in %.1fs", model_dir, out_path, time.perf_counter() - started)
    return out_path

