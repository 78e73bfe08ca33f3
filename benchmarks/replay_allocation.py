"""Replay the learnability filter on recorded rounds: which candidates would a variant have picked?

    python benchmarks/replay_allocation.py                    # every saved LaDa run of quality_real
    python benchmarks/replay_allocation.py --runs benchmarks/results/quality_real/runs/seed0-lada

A real-model federation takes an hour; the filter's decision takes milliseconds. Each run of
``benchmarks/quality_real.py`` saves ``trace.json`` (per client and round: the candidates' ids,
families and feature rows, what was allocated, the credit each allocated sample earned). For
every round ``t >= 2`` this script refits a fresh filter on the recorded history of rounds
``< t``, as the coordinator did, and lets it select among round ``t``'s recorded candidates.

It is a one-step counterfactual: the history is what the original filter allocated and the SLM
it trained, so a variant is judged on the next decision only, not on what it would have taught.
With features that do not depend on the SLM's weights (``local_similarity``, ``path_tokens``)
the candidates' rows are the same whatever was allocated before.

Variants: ``raw`` (credits kept as measured, ``FilterConfig.credit_scale="raw"``), ``rank`` (each
round's credits replaced by their ranks within that round, the default ``"round_rank"``: credits
of different rounds are measured on different SLMs, and an SLM that has learnt its family credits
that family's samples less), each also ``+greedy`` (no exploration term) or ``+coverNN`` (NN % of
each selection spread over the rest of the pool by k-means, ``FilterConfig.coverage_fraction``).
The variant the run itself used reproduces its decisions (a check of the replay: its column equals
``allocated``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("raw", "rank", "raw+greedy", "rank+greedy", "rank+cover25", "rank+cover50")


def _share(ids: list[str], family: dict[str, str], own: str) -> float:
    return sum(family[i] == own for i in ids) / len(ids) if ids else float("nan")


def _mean(per_variant: dict[str, Any], variant: str, t: int, key: str = "variant") -> float:
    """Mean over clients of one figure of round ``t``."""
    return statistics.mean(c[t][key] for c in per_variant[variant].values() if t in c)


def replay(trace: dict[str, Any], config: Any, variant: str) -> dict[str, dict[int, dict[str, float]]]:
    """Per client and round (>= 2): the variant's own-family share, the allocated one, the candidates'."""
    from lada_coordinator.allocation.eenet import LearnabilityFilter

    scale, *options = variant.split("+")
    cfg = dataclasses.replace(config, credit_scale="round_rank" if scale == "rank" else "raw")
    for option in options:
        if option == "greedy":
            cfg = dataclasses.replace(cfg, exploration_weight=0.0)
        elif option.startswith("cover"):
            cfg = dataclasses.replace(cfg, coverage_fraction=int(option.removeprefix("cover")) / 100)
        else:
            raise ValueError(f"unknown variant option {option!r}")
    out: dict[str, dict[int, dict[str, float]]] = {}
    for client, per_round in trace.items():
        own = per_round["family"]
        rounds = sorted(int(t) for t in per_round if t != "family")
        for t in rounds[1:]:
            flt: LearnabilityFilter | None = None
            for past in rounds[: rounds.index(t)]:
                rec = per_round[str(past)]
                if not rec["allocated"] or not rec["credits"]:
                    continue
                row = {s: i for i, s in enumerate(rec["sample_ids"])}
                z = np.asarray(rec["features"], dtype=np.float32)[[row[s] for s in rec["allocated"]]]
                credits = np.asarray(rec["credits"], dtype=np.float64)
                flt = flt or LearnabilityFilter(z.shape[1], cfg)
                flt.observe(z, credits)
                flt.refit()
            rec = per_round[str(t)]
            if flt is None:
                continue
            z_t = np.asarray(rec["features"], dtype=np.float32)
            picked = flt.select(z_t, rec["sample_ids"], t).sample_ids
            family = dict(zip(rec["sample_ids"], rec["families"]))
            out.setdefault(client, {})[t] = {
                "variant": _share(picked, family, own),
                "allocated": _share(rec["allocated"], family, own),
                "candidates": _share(rec["sample_ids"], family, own),
                "n": len(picked),
            }
    return out


def _run_filter(run: Path, budget: int) -> Any:
    """The filter configuration the run's coordinator had (budget and seed, from its
    ``coordinator.json``); the filter's own defaults for the rest."""
    from lada_coordinator.allocation.filter_config import FilterConfig

    config = run / "coordinator.json"
    given = json.loads(config.read_text()).get("slm_filter", {}) if config.exists() else {"budget": budget}
    return FilterConfig.from_dict(given)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        help="run folders holding trace.json (default: the LaDa runs of benchmarks/results/quality_real)",
    )
    p.add_argument(
        "--budget", type=int, default=16, help="the filters' budget B where a run folder has no coordinator.json"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replay_allocation.json")
    args = p.parse_args(argv)

    runs = args.runs or sorted((ROOT / "benchmarks" / "results" / "quality_real" / "runs").glob("seed*-lada"))
    runs = [r for r in runs if (r / "trace.json").exists()]
    if not runs:
        print("no trace.json in the given runs (quality_real.py writes one per run)", file=sys.stderr)
        return 1
    result: dict[str, Any] = {}
    print("own-family share of the allocation in each round with a history (mean over clients)")
    print(f"{'run':<16} {'round':>5} {'candidates':>10} {'allocated':>9} " + " ".join(f"{v:>11}" for v in VARIANTS))
    for run in runs:
        name, trace = run.name, json.loads((run / "trace.json").read_text())
        per_variant = {v: replay(trace, _run_filter(run, args.budget), v) for v in VARIANTS}
        result[name] = per_variant
        rounds = sorted({t for c in per_variant["raw"].values() for t in c})
        for t in rounds:
            cells = " ".join(f"{_mean(per_variant, v, t):>11.2f}" for v in VARIANTS)
            candidates, allocated = (_mean(per_variant, "raw", t, k) for k in ("candidates", "allocated"))
            print(f"{name:<16} {t:>5} {candidates:>10.2f} {allocated:>9.2f} {cells}")
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
