"""Export an SLM to the ONNX *scoring graph* the client runs with onnxruntime.

The decoder is exported with optimum's exporter, with eager attention and a KV cache
(``text-generation-with-past``); :func:`add_logprob_head` then rewrites the end of the graph.
Besides ``input_ids``, ``attention_mask``, ``position_ids`` and the ``past_key_values.*`` (empty,
i.e. ``past_sequence_length`` 0, for scoring and for the first generation step), it takes

* ``token_index`` ``[N, 2]``: ``(row, position)`` of every real token of ``input_ids``, row-major;
* ``score_index`` ``[S, 2]``: ``(row, position)`` of every position whose next-token log-prob is
  wanted (scoring: the completion positions), with ``score_targets`` ``[S]``, the token scored
  there (``input_ids[row, position + 1]``);
* ``next_index`` ``[B, 2]``: per row, the position whose next-token distribution is wanted
  (generation: the last real token);

and returns, instead of ``[B, T, V]`` logits,

* ``token_logprobs`` ``[S]``: ``log p(target | prefix)`` at ``score_index``,
* ``next_logprobs`` ``[B, V]``: the log-distribution at ``next_index``,
* ``present.*``: the KV cache, for the next generation step.

Where the work goes (each step keeps the numbers of the original graph, row by row):

* **Padding is skipped** outside attention: in every decoder layer but the last, the attention
  output and the residual are gathered at ``token_index`` before ``o_proj``, so ``o_proj``, the
  post-attention norm and the MLP (most of a layer's FLOPs) run on the ``N`` real tokens only, and
  the layer's output is scattered back into ``[B, T, H]`` for the next layer's attention.
* **The last layer runs on the requested positions**: its attention output and residual are
  gathered at ``score_index`` and ``next_index`` (``S + B`` rows) before ``o_proj``; its K and V
  still cover every position.
* **No ``[B, T, V]`` tensor**: ``lm_head`` and the log-softmax run on those ``S + B`` rows.
* **Eager attention** builds the additive mask once per forward, where the SDPA export adds
  per-layer mask conversion and NaN clean-up (``Where``/``IsNaN``) over ``[B, H, T, T]``.

The rewrites are found by the layer names of the Hugging Face export
(``/model/layers.<i>/self_attn/o_proj/MatMul``, ``post_attention_layernorm``, ``mlp``); a layer
that does not match is left as exported (and logged). Initializers are never changed, so
``weight_swap`` still finds the projection weights by value.

Graphs exported before this (version 1: ``token_logprobs`` over all ``T - 1`` positions, no KV
cache) are still read by :class:`~lada_client.scoring.onnx_slm.OnnxSLM`.

Needs the ``export`` extra (torch, transformers, optimum-onnx); the client never exports.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from lada_client.models.checkpoint import unused_tokenizer_warnings_dropped
from lada_client.models.tokenizer import SpecialTokens

if TYPE_CHECKING:  # onnx is imported where a graph is rewritten (the ``export`` extra)
    from onnx import GraphProto, ModelProto, NodeProto

log = logging.getLogger(__name__)

#: what a scoring model directory holds (the client moves them together)
SCORING_FILES = ("model.onnx", "tokenizer.json", "special_tokens.json")

OPSET = 18

#: the ``lada_scoring_graph`` metadata of graphs written by :func:`add_logprob_head`; version 1
#: graphs (no metadata) scored every position and had no KV cache; version 2 was a development
#: layout (per-row padded positions) that callers re-export
SCORING_GRAPH_VERSION = 3
GRAPH_VERSION_KEY = "lada_scoring_graph"

#: the head's extra inputs (see the module docstring)
HEAD_INPUTS = ("token_index", "score_index", "score_targets", "next_index")


def _decoder_layers(graph: GraphProto) -> dict[int, NodeProto]:
    """Layer index -> that layer's ``o_proj`` MatMul node."""
    layers = {}
    for node in graph.node:
        m = re.search(r"/layers\.(\d+)/self_attn/o_proj/MatMul$", node.name)
        if node.op_type == "MatMul" and m:
            layers[int(m.group(1))] = node
    return layers


def _attention_residual(
    graph: GraphProto, consumers: dict[str, list[NodeProto]], o_proj: NodeProto
) -> tuple[NodeProto, int] | None:
    """The ``Add`` of ``o_proj``'s output and the layer input, with the layer input's index."""
    users = consumers[o_proj.output[0]]
    if len(users) != 1 or users[0].op_type != "Add" or len(users[0].input) != 2:
        return None
    if o_proj.output[0] in {o.name for o in graph.output}:
        return None
    add = users[0]
    return add, 1 - list(add.input).index(o_proj.output[0])


def _mlp_block(consumers: dict[str, list[NodeProto]], layer: int, add_attn: NodeProto) -> NodeProto | None:
    """The layer's closing residual ``Add`` (after post-attention norm and MLP), if everything
    between the attention residual and it is that layer's norm or MLP (row-wise ops only)."""
    prefixes = (f"/model/layers.{layer}/post_attention_layernorm/", f"/model/layers.{layer}/mlp/")
    closing: NodeProto | None = None
    seen: set[int] = set()
    stack = [add_attn.output[0]]
    while stack:
        for node in consumers[stack.pop()]:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.name.startswith(prefixes):
                if node.op_type != "Add" or (closing is not None and node is not closing):
                    return None
                closing = node  # leaves the layer: the residual Add of the MLP output
                continue
            if node.op_type in ("Shape", "Reshape", "Size", "Expand"):
                return None
            stack.extend(node.output)
    return closing


def _topological_order(graph: GraphProto) -> None:
    """Re-sort ``graph.node`` so every node follows the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    waiting: dict[str, list[int]] = defaultdict(list)
    missing = []
    for i, node in enumerate(graph.node):
        need = {x for x in node.input if x not in available}
        missing.append(len(need))
        for x in need:
            waiting[x].append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for out in graph.node[i].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if len(order) != len(graph.node):
        raise ValueError("scoring graph has a cycle or an undefined input")
    nodes = [type(graph.node[i])() for i in order]
    for copy, i in zip(nodes, order):
        copy.CopyFrom(graph.node[i])
    del graph.node[:]
    graph.node.extend(nodes)


def add_logprob_head(model_path: Path, out_path: Path) -> Path:
    """Rewrite an exported decoder's ``logits`` output into the log-prob outputs (see the
    module docstring for the inputs, outputs and rewrites)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    if [o.name for o in graph.output][:1] != ["logits"]:
        raise ValueError(f"{model_path} has no 'logits' output; is it a decoder export?")
    initializers = {i.name for i in graph.initializer}
    consumers: dict[str, list[NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph.initializer.extend(
        [
            helper.make_tensor("lada_axis_last", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("lada_zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("lada_axis0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("lada_big", TensorProto.INT64, [1], [2**62]),
        ]
    )
    nodes = []

    # 1. layers but the last: o_proj, norm and MLP on the real tokens only
    layers = _decoder_layers(graph)
    last_o_proj = layers[max(layers)] if layers else None
    unpadded = []
    for i in sorted(layers)[:-1]:
        found = _attention_residual(graph, consumers, layers[i])
        closing = _mlp_block(consumers, i, found[0]) if found else None
        if found is None or closing is None:
            log.warning("%s: layer %d does not have the expected shape; its padding is kept", model_path, i)
            continue
        add_attn, residual = found
        o_proj, layer_input = layers[i], add_attn.input[residual]
        attn, out = o_proj.input[0], closing.output[0]
        full = f"lada_unpad/{i}/output"
        nodes += [
            helper.make_node("GatherND", [attn, "token_index"], [f"lada_unpad/{i}/attn"], name=f"lada_unpad/{i}/attn"),
            helper.make_node(
                "GatherND", [layer_input, "token_index"], [f"lada_unpad/{i}/res"], name=f"lada_unpad/{i}/res"
            ),
            helper.make_node("ScatterND", [layer_input, "token_index", out], [full], name=f"lada_unpad/{i}/scatter"),
        ]
        o_proj.input[0] = f"lada_unpad/{i}/attn"
        add_attn.input[residual] = f"lada_unpad/{i}/res"
        for node in consumers[out]:
            if node is not closing:
                node.input[:] = [full if x == out else x for x in node.input]
        unpadded.append(i)

    # 2. the requested rows: the S scored positions, then one per row for generation
    head = [
        helper.make_node("Concat", ["score_index", "next_index"], ["lada_rows"], axis=0),
    ]
    producer = next(n for n in graph.node if "logits" in n.output)
    if producer.op_type == "MatMul" and producer.input[1] in initializers:
        source, weight = producer.input[0], producer.input[1]  # lm_head: moved behind the gather
    else:
        source, weight, producer = "logits", None, None
    found = _attention_residual(graph, consumers, last_o_proj) if last_o_proj is not None else None
    if found is not None and last_o_proj is not None:
        add_attn, residual = found
        o_proj = last_o_proj
        head += [
            helper.make_node("GatherND", [o_proj.input[0], "lada_rows"], ["lada_attn_sel"]),
            helper.make_node("GatherND", [add_attn.input[residual], "lada_rows"], ["lada_residual_sel"]),
        ]
        o_proj.input[0] = "lada_attn_sel"
        add_attn.input[residual] = "lada_residual_sel"
        selected = source  # already [S + B, ...]
    else:
        log.warning("%s: no last-layer cut found; gathering the rows before lm_head only", model_path)
        head.append(helper.make_node("GatherND", [source, "lada_rows"], ["lada_selected"]))
        selected = "lada_selected"
    if weight is not None:
        head.append(helper.make_node("MatMul", [selected, weight], ["lada_logits"]))
    else:
        head.append(helper.make_node("Identity", [selected], ["lada_logits"]))
    head += [
        # [S + B, V] log-softmax (onnxruntime's LogSoftmax is several times faster than its
        # ReduceLogSumExp), then the S scored targets and the B distributions for generation
        helper.make_node("LogSoftmax", ["lada_logits"], ["lada_lp"], axis=-1),
        helper.make_node("Shape", ["score_targets"], ["lada_n_scored"]),
        helper.make_node("Slice", ["lada_lp", "lada_zero", "lada_n_scored", "lada_axis0"], ["lada_scored"]),
        helper.make_node("Unsqueeze", ["score_targets", "lada_axis_last"], ["lada_targets2"]),
        helper.make_node("GatherElements", ["lada_scored", "lada_targets2"], ["lada_tok2"], axis=1),
        helper.make_node("Squeeze", ["lada_tok2", "lada_axis_last"], ["token_logprobs"]),
        helper.make_node("Slice", ["lada_lp", "lada_n_scored", "lada_big", "lada_axis0"], ["next_logprobs"]),
    ]
    for i, node in enumerate(head):
        node.name = f"lada_head/{i}_{node.op_type}"  # named, so profiles can attribute the head's cost
    graph.node.extend(nodes + head)
    if producer is not None:
        graph.node.remove(producer)  # lm_head over every position (last: node references stay valid)
    graph.input.extend(
        [
            helper.make_tensor_value_info("token_index", TensorProto.INT64, ["tokens", 2]),
            helper.make_tensor_value_info("score_index", TensorProto.INT64, ["scored", 2]),
            helper.make_tensor_value_info("score_targets", TensorProto.INT64, ["scored"]),
            helper.make_tensor_value_info("next_index", TensorProto.INT64, ["batch_size", 2]),
        ]
    )
    cache = [o for o in graph.output if o.name.startswith("present")]
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("token_logprobs", TensorProto.FLOAT, ["scored"]),
            helper.make_tensor_value_info("next_logprobs", TensorProto.FLOAT, ["batch_size", "vocab"]),
            *cache,
        ]
    )
    del graph.value_info[:]  # intermediate shapes changed (gathered rows); onnxruntime re-infers them
    _topological_order(graph)
    helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props},
            GRAPH_VERSION_KEY: str(SCORING_GRAPH_VERSION),
            "lada_unpadded_layers": ",".join(map(str, unpadded)),
            "lada_last_layer_cut": str(found is not None),
        },
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(model, out_path)
    log.info("log-prob head on %s: layers %s unpadded, last-layer cut %s", model_path, unpadded, found is not None)
    return out_path


#: protobuf cannot serialise a message of 2 GiB or more: larger graphs keep their weights beside them
_PROTO_LIMIT = 2**31 - 64 * 2**20


def save_onnx(model: ModelProto, out_path: Path) -> None:
    """Check and save a graph; one of 2 GiB or more (e.g. a 0.5B-parameter model in float32) keeps
    its weights in ``<name>.data`` beside it, which onnxruntime reads from there."""
    import onnx

    if model.ByteSize() < _PROTO_LIMIT:
        onnx.checker.check_model(model)
        onnx.save(model, str(out_path))
        return
    onnx.save_model(
        model,
        str(out_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=out_path.name + EXTERNAL_DATA_SUFFIX,
        size_threshold=1024,
    )
    onnx.checker.check_model(str(out_path))


EXTERNAL_DATA_SUFFIX = ".data"


def scoring_files(directory: Path) -> list[str]:
    """The files of a scoring model in ``directory`` as they must move together: the optional
    external weights first, the graph last (its presence means the set is complete)."""
    data = SCORING_FILES[0] + EXTERNAL_DATA_SUFFIX
    return [*SCORING_FILES[1:], *([data] if (Path(directory) / data).exists() else []), SCORING_FILES[0]]


def scoring_graph_version(onnx_path: Path) -> int:
    """The :data:`SCORING_GRAPH_VERSION` an exported scoring graph was written with (1 if none)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == GRAPH_VERSION_KEY:
            return int(prop.value)
    return 1


def special_tokens_of(model_dir: Path) -> SpecialTokens:
    from transformers import AutoConfig

    return SpecialTokens.from_model_config(AutoConfig.from_pretrained(str(model_dir)))


def export_scoring_model(model_dir: Path, out_path: Path) -> Path:
    """Export ``model_dir`` (a HF checkpoint, adapters merged) to an ONNX scoring file, with the
    tokenizer and special-token ids beside it (see :data:`SCORING_FILES`)."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    # eager attention: one additive mask per forward instead of SDPA's per-layer mask plumbing
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    model.config.use_cache = True
    with tempfile.TemporaryDirectory(prefix="lada-export-") as tmp, warnings.catch_warnings():
        # Known noise of tracing a decoder: Python-side shape checks and constant tensors in
        # transformers' and optimum's code, and opset 18's way of exporting advanced indexing.
        # The graph is checked by what scores with it, not by these.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        with unused_tokenizer_warnings_dropped():  # optimum saves a tokenizer copy; tokenizer.json is ours
            onnx_export_from_model(
                model,
                output=tmp,
                task="text-generation-with-past",
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
