"""A scoring-only process for :mod:`bench_footprint`: what a device does each round, nothing else.

Runs in whichever environment starts it (the client-only venv for the footprint figure), so it
imports only the standard library, numpy and ``lada_client``. Prints one JSON line: timings, its
own peak RSS (``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's memory map,
unlike ``ru_maxrss``, which keeps the peak of the process that forked it) and whether torch was
ever imported.

    python benchmarks/_score_child.py --mode onnx-features --model-dir DIR --public FILE --candidates 256 [--seal]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def load_candidates(public: Path, n: int):
    from lada_client.common.wire import Candidate

    rows = [json.loads(line) for line in public.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        s = rows[i % len(rows)]
        tokens = max(1, len(s["rationale"].split()) + 2)
        out.append(
            Candidate(
                sample_id=f"{s['sample_id']}#{i}",
                question=s["question"],
                path=s["rationale"],
                llm_logprob=-0.8 * tokens,
                llm_tokens=tokens,
            )
        )
    return out


def seal_upload(cands, features) -> int:
    """The upload half of a device's round: the features.put message, signed and encrypted with
    fresh identities (the coordinator's keys would be pinned at enrollment); returns its size."""
    from lada_client.common.crypto import Direction, Identity, seal
    from lada_client.common.wire import EnvelopeHeader, FeatureUpload
    from lada_client.scoring.features import FEATURE_NAMES

    device, coordinator = Identity.generate(), Identity.generate()
    upload = FeatureUpload(
        round=1,
        feature_names=list(FEATURE_NAMES),
        sample_ids=[c.sample_id for c in cands],
        features=[[float(v) for v in row] for row in features],
    )
    header = EnvelopeHeader(client_id="device-0000abcd", round=1, seq=1, kind="features.put", sent_at=time.time())
    envelope = seal(upload.model_dump_json().encode(), header, device, coordinator.public, Direction.TO_COORDINATOR)
    return len(envelope.to_bytes())


def vm_mib(field: str = "VmHWM") -> float | None:
    """A memory line of ``/proc/self/status`` in MiB (``VmHWM``: the peak RSS; ``VmRSS``: now)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["onnx-features", "onnx-logprobs", "torch-logprobs"], default="onnx-features")
    p.add_argument("--model-dir", type=Path, required=True, help="client model dir (holds onnx/ and base/)")
    p.add_argument("--public", type=Path, required=True, help="public.jsonl of the federation data")
    p.add_argument("--candidates", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--seal",
        action="store_true",
        help="onnx-features: also build the round's features.put message and seal it (sign + encrypt) "
        "as the device sends it",
    )
    args = p.parse_args()
    started = time.perf_counter()
    sealed_bytes = None
    cands = load_candidates(args.public, args.candidates)
    from lada_client.common.reasoning import format_prompt, format_target

    prompts = [format_prompt(c.question) for c in cands]
    paths = [format_target(c.path) for c in cands]
    if args.mode.startswith("onnx"):
        from lada_client.scoring.onnx_slm import OnnxSLM

        slm = OnnxSLM(args.model_dir / "onnx" / "model.onnx", providers=["CPUExecutionProvider"])
        loaded = time.perf_counter()
        if args.mode == "onnx-features":
            from lada_client.scoring.features import learnability_features

            result = learnability_features(slm, cands, batch_size=args.batch_size)
            shape = list(result.shape)
            if args.seal:
                sealed_bytes = seal_upload(cands, result)
        else:
            result = slm.completion_logprobs(prompts, paths, batch_size=args.batch_size)
            shape = [len(result)]
    else:
        import torch

        from lada_client.models.checkpoint import load_causal_lm
        from lada_client.models.encoding import encode_pairs
        from lada_client.models.tokenizer import SpecialTokens
        from lada_client.training.losses import token_logprobs

        model, tokenizer = load_causal_lm(args.model_dir / "base")
        model.eval()
        special = SpecialTokens.from_model_config(model.config)
        loaded = time.perf_counter()
        shape = [0]
        with torch.no_grad():
            for start in range(0, len(prompts), args.batch_size):
                enc = encode_pairs(
                    tokenizer,
                    prompts[start : start + args.batch_size],
                    paths[start : start + args.batch_size],
                    256,
                    special,
                )
                token_logprobs(model, torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
                shape[0] += enc.input_ids.shape[0]
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "sealed_upload_bytes": sealed_bytes,
                "mode": args.mode,
                "candidates": args.candidates,
                "output_shape": shape,
                "load_s": loaded - started,
                "score_s": done - loaded,
                "vm_hwm_mib": vm_mib(),
                "torch_imported": "torch" in sys.modules,
                "python": sys.executable,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
