"""Learning quality: LaDa against its baselines on a local federation, accuracy per round.

Three clients with different reasoning domains (``lookup``, ``count``, ``largest``: rules a tiny
model learns and applies to questions it has not seen; ``largest`` is left out of the teacher's
warm-up (``--llm-unseen``) so that only the clients know it; ``--toy-domains arithmetic`` for the
earlier ``add``, ``sub``, ``mul`` facts) and, in the ``mkt`` host, SLMs of three sizes, learn
from a tiny LLM teacher that ``lada_coordinator.federation.prepare`` warm-starts on the public
pool. Every configuration is a real federation
(:func:`lada_coordinator.federation.run_federation`: one coordinator process and one process per
client on loopback) on identical data, warm starts and budgets; only the method switch differs:

============  ==============================  ===================================================
key           method                          switch
============  ==============================  ===================================================
``local``     local-only                      ``allocation="none"`` (private data only)
``random``    host + random allocation        ``allocation="random"`` (same budget B, uniform)
``all``       host + all candidates           ``allocation="all"`` (no filter)
``sft``       SFT-only distillation           ``allocation="lada"``, ``alpha=0``
``lada``      LaDa                            ``allocation="lada"``, ``alpha=0.5``
============  ==============================  ===================================================

each inside a host framework: ``mkt`` (mutual knowledge transfer; heterogeneous SLM presets; the
default) and, with ``--hosts mkt cotuning``, ``cotuning`` (secure FedAvg of adapters; all clients
``slm-medium``, since only same-architecture clients can average).

One work directory per (seed, host) under ``--cache-dir`` holds the data, tokenizer and SLM warm
starts, built once and reused by every method (the ``cotuning`` directory starts as a copy of the
``mkt`` one). The teacher is warm-started once, in the first seed's directory, and every run of
every seed uses that checkpoint (``FederationSettings.llm_checkpoint``): a teacher pre-trained on
the general mix, as a deployment would bring one; seeds vary the data and the students. Before the first round
the benchmark evaluates the warm-started SLMs and teacher itself (round 0 of every curve). After
each run it copies ``last_run.json``, the run's ``report.html``, the clients' per-round results, configs and logs to
``--results-dir/<host>/<method>/seed<k>/`` and extracts allocation diagnostics (selection
reasons, in-domain share, teacher-path sources, rewards, perplexities, LoRA steps) from the
coordinator's database. A run whose results are already there with the same settings is not
repeated (``--rerun`` forces it), so an interrupted benchmark resumes. Finally it aggregates
mean ± std over seeds and writes the report (``--out``) with two plots next to it.

    python benchmarks/quality.py                        # default size (see DEFAULT below)
    python benchmarks/quality.py --seeds 0 1 2          # the full protocol: 3 seeds x 5 rounds
    python benchmarks/quality.py --quick                # smoke run, report to benchmarks/results/
    python benchmarks/quality.py --report-only          # rebuild the report from saved results
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from _common import mean_std, pm
from lada_client.config import FEATURE_NAMES
from lada_coordinator.config import LLM_DISTILL
from lada_coordinator.simulation.domains import DOMAIN_SETS

NAME = "quality"
log = logging.getLogger("benchmarks.quality")

# ---------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    allocation: str
    alpha: float
    coverage: float = 0.0


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("local", "local-only", "none", 0.5),
        Method("random", "host + random allocation", "random", 0.5),
        Method("all", "host + all candidates", "all", 0.5),
        Method("sft", "SFT-only distillation (LaDa allocation, α=0)", "lada", 0.0),
        Method("lada", "LaDa (α=0.5)", "lada", 0.5),
        Method("lada-cover", "LaDa + coverage 0.25", "lada", 0.5, coverage=0.25),
    )
}
HOSTS = ("mkt", "cotuning")
#: what the clients' reward measures, with the client defaults (``RewardSettings``), for the report
REWARD_NOTE = (
    "the client's own task: the relative drop, over its round, of the answer NLL on a held-out quarter of "
    "its private data, credited to each allocated sample by the alignment of its gradient with that loss's"
)
COTUNING_PRESETS = ("slm-medium",)  # co-tuning averages adapters: one architecture for all clients


@dataclass(frozen=True)
class Sizes:
    """Everything that sets the cost of the benchmark; the report lists the values used."""

    seeds: tuple[int, ...]
    rounds: int
    candidates: int
    budget: int
    n_train: int
    epochs: int
    n_test: int
    n_public: int
    offer_questions: int
    llm_epochs: int
    llm_warmup_steps: int
    slm_warmup_steps: int


# The fast loop: the rule domains, sized for 30 minutes on two CPU cores from an empty cache
# (three seeds, host mkt, six methods, the teacher built once); docs/benchmarks_quality.md
# reports the times of its run. 48 private questions per client (a quarter of them the reward's
# held-out split) make the 16 allocated paths a round a sizeable share of what a client trains
# on; 200 test questions per client resolve differences of about ±0.035. 48 offered questions
# give the LLM direction ~15 SLM paths a round.
DEFAULT = Sizes(
    seeds=(0, 1, 2),
    rounds=5,
    candidates=64,
    budget=16,
    n_train=48,
    epochs=2,
    n_test=200,
    n_public=4000,
    offer_questions=48,
    llm_epochs=1,
    llm_warmup_steps=1200,
    slm_warmup_steps=150,
)
DEFAULT_HOSTS = ("mkt",)
#: The candidate features of every run: those whose value does not move as the SLM trains, as in
#: benchmarks/quality_real.py (the likelihood features read "just learned" as "not learnable").
DEFAULT_FEATURES = ("local_similarity", "path_tokens")
# A smoke run: one seed, two rounds, two methods, one host, tiny sizes and barely trained models.
QUICK = Sizes(
    seeds=(0,),
    rounds=2,
    candidates=16,
    budget=4,
    n_train=40,
    epochs=1,
    n_test=8,
    n_public=160,
    offer_questions=4,
    llm_epochs=1,
    llm_warmup_steps=4,
    slm_warmup_steps=4,
)
QUICK_METHODS = ("random", "lada")
QUICK_HOSTS = ("mkt",)
CLIENT_PHASES = ("score", "wait_allocation", "train", "evaluate", "secure_aggregation")
COORDINATOR_PHASES = ("open", "allocate", "close")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, 2 rounds, methods random+lada, host mkt, tiny sizes"
    )
    p.add_argument("--seeds", type=int, nargs="+", help=f"federation seeds (default {list(DEFAULT.seeds)})")
    p.add_argument("--rounds", type=int, help=f"rounds per federation (default {DEFAULT.rounds})")
    p.add_argument("--candidates", type=int, help=f"candidates per round (default {DEFAULT.candidates})")
    p.add_argument("--budget", type=int, help=f"per-client allocation budget B (default {DEFAULT.budget})")
    p.add_argument("--n-train", type=int, help=f"private training samples per client (default {DEFAULT.n_train})")
    p.add_argument("--epochs", type=int, help=f"clients' training passes per round (default {DEFAULT.epochs})")
    p.add_argument("--n-test", type=int, help=f"private test samples per client (default {DEFAULT.n_test})")
    p.add_argument("--n-public", type=int, help=f"public pool size (default {DEFAULT.n_public})")
    p.add_argument(
        "--offer-questions", type=int, help=f"public questions offered to the LLM (default {DEFAULT.offer_questions})"
    )
    p.add_argument("--llm-epochs", type=int, help=f"the LLM's training passes per round (default {DEFAULT.llm_epochs})")
    p.add_argument(
        "--llm-alpha",
        type=float,
        default=LLM_DISTILL.alpha,
        help="weight of L_CD in the LLM's LoRA step (0 = SFT-only)",
    )
    p.add_argument(
        "--llm-rehearsal",
        type=float,
        default=0.0,
        help="the LLM's own verified paths trained alongside, per SLM path it chose (0 = off)",
    )
    p.add_argument(
        "--llm-warmup-steps", type=int, help=f"teacher warm-start steps (default {DEFAULT.llm_warmup_steps})"
    )
    p.add_argument("--slm-warmup-steps", type=int, help=f"SLM warm-start steps (default {DEFAULT.slm_warmup_steps})")
    p.add_argument(
        "--methods", nargs="+", choices=list(METHODS), help=f"methods to run (default all: {' '.join(METHODS)})"
    )
    p.add_argument(
        "--hosts", nargs="+", choices=list(HOSTS), help=f"host frameworks to run (default {' '.join(DEFAULT_HOSTS)})"
    )
    p.add_argument(
        "--toy-domains",
        choices=list(DOMAIN_SETS),
        default="rules",
        help="client domains: rules a tiny model learns (lookup, count, largest) or arithmetic facts (add, sub, mul)",
    )
    p.add_argument(
        "--llm-unseen",
        nargs="*",
        help="domains left out of the teacher's warm-up, known only to the clients "
        "(default: largest with --toy-domains rules, none with arithmetic)",
    )
    p.add_argument(
        "--features",
        nargs="+",
        choices=list(FEATURE_NAMES),
        help=f"learnability features the coordinator asks for (default {' '.join(DEFAULT_FEATURES)})",
    )
    p.add_argument(
        "--mkt-presets",
        default="slm-large,slm-medium,slm-small",
        help="SLM presets of the mkt host, one per client in turn",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        help="use this teacher checkpoint directory as is instead of warm-starting one "
        "(its --llm-warmup-steps is then only a label)",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=C.CACHE_DIR / NAME, help="work directories with the cached warm starts"
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        help="per-run results (default benchmarks/results/quality, or quality_quick with --quick)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="report path (default docs/benchmarks_quality.md, or benchmarks/results/quality_quick.md with --quick)",
    )
    p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free port per run)")
    p.add_argument(
        "--client-threads", type=int, default=1, help="OMP/torch threads of each coordinator and client process"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds run side by side (on 2 cores, 2 jobs were slower than 1: 57 s per federation against 48 s)",
    )
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="give up on one federation run after this many seconds"
    )
    p.add_argument("--rerun", action="store_true", help="run every configuration even if its results are already saved")
    p.add_argument(
        "--report-only", action="store_true", help="do not run anything: rebuild the report from saved results"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Sizes, tuple[str, ...], tuple[str, ...]]:
    base = QUICK if args.quick else DEFAULT
    overrides = {f.name: getattr(args, f.name) for f in fields(Sizes) if getattr(args, f.name, None) is not None}
    if "seeds" in overrides:
        overrides["seeds"] = tuple(overrides["seeds"])
    sizes = replace(base, **overrides)
    methods = tuple(args.methods or (QUICK_METHODS if args.quick else METHODS))
    hosts = tuple(args.hosts or (QUICK_HOSTS if args.quick else DEFAULT_HOSTS))
    if args.features is None:
        args.features = list(DEFAULT_FEATURES)
    if args.llm_unseen is None:
        args.llm_unseen = _default_unseen(args.toy_domains)
    if args.results_dir is None:
        args.results_dir = C.RESULTS_DIR / ("quality_quick" if args.quick else "quality")
    if args.out is None:
        args.out = C.RESULTS_DIR / "quality_quick.md" if args.quick else C.REPO_ROOT / "docs" / "benchmarks_quality.md"
    if sizes.rounds < 1 or sizes.budget < 1 or sizes.candidates < sizes.budget or sizes.epochs < 0:
        raise SystemExit("quality: need rounds >= 1, candidates >= budget >= 1 and epochs >= 0")
    args.teacher_world = args.cache_dir / f"seed{sizes.seeds[0]}-{hosts[0]}"
    return sizes, methods, hosts


def teacher_dir(args: argparse.Namespace) -> Path:
    """The one teacher checkpoint every run uses (built in the first seed's work directory)."""
    return args.teacher or args.teacher_world / "models" / "llm"


def presets_for(host: str, args: argparse.Namespace) -> tuple[str, ...]:
    return COTUNING_PRESETS if host == "cotuning" else tuple(args.mkt_presets.split(","))


def settings_for(
    sizes: Sizes, seed: int, host: str, method: Method | None, args: argparse.Namespace, workdir: Path, port: int = 0
):
    from lada_coordinator.federation import FederationSettings

    return FederationSettings(
        workdir=workdir,
        clients=3,
        rounds=sizes.rounds,
        allocation=method.allocation if method else "lada",
        candidates=sizes.candidates,
        budget=sizes.budget,
        port=port,
        seed=seed,
        n_train=sizes.n_train,
        n_test=sizes.n_test,
        eval_size=sizes.n_test,  # every client evaluates on its whole test split
        n_public=sizes.n_public,
        llm_warmup_steps=sizes.llm_warmup_steps,
        slm_warmup_steps=sizes.slm_warmup_steps,
        offer_questions=sizes.offer_questions,
        llm_epochs=sizes.llm_epochs,
        llm_alpha=args.llm_alpha,
        llm_rehearsal=args.llm_rehearsal,
        alpha=method.alpha if method else 0.5,
        coverage=method.coverage if method else 0.0,
        epochs=sizes.epochs,
        host_framework=host,
        slm_presets=presets_for(host, args),
        timeout_s=args.timeout,
        toy_domains=args.toy_domains,
        llm_unseen=tuple(args.llm_unseen),
        features=tuple(args.features),
        llm_checkpoint=None
        if args.teacher is None and workdir == args.teacher_world and method is None
        else teacher_dir(args),
    )


def signature(settings: Any) -> dict[str, Any]:
    """What makes two runs comparable: every setting except where and on which port they ran."""
    from lada_coordinator.simulation.tokenizer import DEFAULT_VOCAB_SIZE

    d = asdict(settings)
    for key in ("workdir", "port", "timeout_s"):
        d.pop(key, None)
    d.pop("llm_checkpoint", None)  # always the benchmark's one teacher, described by llm_warmup_steps
    d["vocab_size"] = DEFAULT_VOCAB_SIZE  # the world's tokenizer (every model is built on it)
    return json.loads(json.dumps(d, default=str))  # as saved: tuples become lists, paths strings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ set-up


def prepare_world(sizes: Sizes, seed: int, host: str, args: argparse.Namespace) -> tuple[dict[str, Path], float]:
    """Build (or reuse) the (seed, host) work directory; returns its paths and the seconds spent.

    A host's directory that does not exist yet starts as a copy of the same seed's other host
    directory (worlds of one seed are prepared one after the other): data, tokenizer and the SLMs
    of equal preset carry over, their build markers match, and ``prepare`` rebuilds only the
    SLMs whose preset differs.
    """
    from lada_coordinator.federation import prepare

    workdir = args.cache_dir / f"seed{seed}-{host}"
    if not workdir.exists():
        for other in HOSTS:
            sibling = args.cache_dir / f"seed{seed}-{other}"
            if other != host and sibling.exists():
                log.info("seeding %s from %s (data, tokenizer and equal SLMs are shared)", workdir.name, sibling.name)
                shutil.copytree(sibling, workdir, ignore=shutil.ignore_patterns("run", "last_run.json"))
                break
    started = time.perf_counter()
    paths = prepare(settings_for(sizes, seed, host, None, args, workdir))
    return paths, time.perf_counter() - started


def warmstart_eval(
    paths: dict[str, Path], key: dict[str, Any], cache: Path, setup_s: float, teacher_memo: dict
) -> dict[str, Any]:
    """Round 0: the warm-started SLMs on their own test split and the teacher on all of them,
    evaluated exactly as the clients and the coordinator evaluate during rounds. The hosts of one
    seed share the teacher and the test questions, so ``teacher_memo`` keeps its figures for the
    next host instead of generating the same greedy answers again."""
    if cache.exists():
        saved = json.loads(cache.read_text())
        if C.same_run(saved.get("key", {}), key):  # a key saved before a setting existed still counts
            return saved
    from lada_client.config import DistillSettings, LoraSettings
    from lada_client.data.federation import FederationData
    from lada_coordinator.config import CoordinatorConfig
    from lada_coordinator.llm.host import LLMHost

    eval_size = key["eval_size"]
    fed = FederationData.load(paths["data"])
    started = time.perf_counter()
    slm = {c.name: C.slm_accuracy(paths[c.name] / "onnx" / "model.onnx", c.test[:eval_size]) for c in fed.clients}
    coord_max_new = next(f.default for f in fields(CoordinatorConfig) if f.name == "max_new_tokens")
    # by content: sample ids are positional, so two seeds' test splits share them
    memo_key = (
        str(paths["llm"].resolve()),
        tuple((s.question, s.answer) for c in fed.clients for s in c.test[:eval_size]),
    )
    if memo_key not in teacher_memo:
        with tempfile.TemporaryDirectory(prefix="lada-quality-") as tmp:
            host = LLMHost(
                paths["llm"], Path(tmp) / "adapter", LoraSettings(), DistillSettings().max_length, coord_max_new
            )
            teacher_memo[memo_key] = {c.name: host.accuracy(c.test[:eval_size]) for c in fed.clients}
    per_domain = teacher_memo[memo_key]
    # the coordinator's figure pools the same test prefixes: the size-weighted mean of the above
    sizes = {c.name: len(c.test[:eval_size]) for c in fed.clients}
    llm = sum(per_domain[n] * k for n, k in sizes.items()) / max(1, sum(sizes.values()))
    result = {
        "key": key,
        "slm_accuracy": slm,
        "llm_accuracy": llm,
        "llm_accuracy_per_client": per_domain,
        "domains": {c.name: c.domain for c in fed.clients},
        "seconds": round(time.perf_counter() - started, 1),
        "setup_s": round(setup_s, 1),  # building the work directory when this record was made
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------- one run


def run_one(
    sizes: Sizes, seed: int, host: str, method: Method, args: argparse.Namespace, workdir: Path, dest: Path
) -> dict[str, Any]:
    from lada_coordinator.federation import run_federation

    port = args.port or free_port()
    settings = settings_for(sizes, seed, host, method, args, workdir, port)
    load_before = os.getloadavg()
    started = time.perf_counter()
    code = run_federation(settings)
    wall = time.perf_counter() - started
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run_dir = workdir / "run"
    for pattern in ("client*.json", "coordinator.json"):
        for f in run_dir.glob(pattern):
            shutil.copy2(f, dest / f.name)
    if (run_dir / "logs").exists():
        shutil.copytree(run_dir / "logs", dest / "logs")
    record = {
        "host": host,
        "method": method.key,
        "seed": seed,
        "settings": signature(settings),
        "machine": C.machine_info(),  # the same weights can answer differently on another CPU model
        "exit_code": code,
        "wall_s": round(wall, 1),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if code == 0:
        shutil.copy2(workdir / "last_run.json", dest / "last_run.json")
        shutil.copy2(workdir / "report.html", dest / "report.html")  # the run's own report (lada_coordinator.report)
        record["diagnostics"] = diagnostics(run_dir, workdir / "data", dest)
    (dest / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def diagnostics(run_dir: Path, data_dir: Path, dest: Path) -> dict[str, Any]:
    """Per round and client: what was allocated and why, from the coordinator's database, plus
    the clients' own numbers (PPL before/after, LoRA steps and pairs) from their results and logs."""
    import numpy as np

    from lada_client.data.federation import FederationData
    from lada_coordinator.allocation.allocator import LLM, SLM
    from lada_coordinator.store import Store

    fed = FederationData.load(data_dir)
    public_domain = {s.sample_id: s.domain for s in fed.public}
    own_domain = {c.name: c.domain for c in fed.clients}
    store = Store(run_dir / "coordinator.sqlite")
    try:
        names = {c.client_id: c.name for c in store.clients()}
        rounds: list[dict[str, Any]] = []
        for metrics in store.round_metrics():
            t = metrics.round
            _, paths = store.round_info(t)
            sources = paths.path_sources
            per_client: dict[str, Any] = {}
            for client_id, up in store.uploads(t, "features.put").items():
                name = names.get(client_id, client_id)
                ids = up.sample_ids
                z = np.asarray(up.features, dtype=np.float64).reshape(len(ids), -1)
                alloc = store.allocation(t, client_id, SLM) or ([], "missing")
                chosen = set(alloc[0])
                rows = [i for i, s in enumerate(ids) if s in chosen]
                llm_alloc = store.allocation(t, client_id, LLM)
                per_client[name] = {
                    "n_allocated": len(alloc[0]),
                    "reason": alloc[1],
                    "in_domain_allocated": _share([public_domain.get(s) == own_domain.get(name) for s in alloc[0]]),
                    "in_domain_candidates": _share([public_domain.get(s) == own_domain.get(name) for s in ids]),
                    "llm_paths_allocated": _share([sources.get(s) == "llm" for s in alloc[0]]),
                    "features_allocated": dict(zip(up.feature_names, z[rows].mean(axis=0).round(4).tolist()))
                    if rows
                    else {},
                    "features_candidates": dict(zip(up.feature_names, z.mean(axis=0).round(4).tolist()))
                    if len(ids)
                    else {},
                    "n_offers": len(up.offers),
                    "n_offers_taken": len(llm_alloc[0]) if llm_alloc else 0,
                }
            rounds.append({"round": t, "path_stats": dict(paths.path_stats), "clients": per_client})
    finally:
        store.close()
    for name in own_domain:
        results = dest / f"{name}.results.json"
        per_round = json.loads(results.read_text()) if results.exists() else []
        for r in rounds:
            entry = r["clients"].setdefault(name, {})
            res = next((x for x in per_round if x["round"] == r["round"]), None)
            if res and res["n_allocated"]:
                entry.update(ppl_before=res["ppl_before"], ppl_after=res["ppl_after"], reward=res["reward"])
            training = (res or {}).get("training")  # the client's own record of its LoRA update
            if training:
                entry.update(
                    lora_steps=training["steps"],
                    l_sft=training["sft_loss"],
                    l_cd=training["cd_loss"],
                    cd_pairs=training["cd_pairs"],
                )
    status = json.loads((dest / "last_run.json").read_text()) if (dest / "last_run.json").exists() else {}
    phases = {  # the coordinator's own timing of its steps, recorded with each round's metrics
        step: {m["round"]: m[f"seconds_{step}"] for m in status.get("rounds", []) if f"seconds_{step}" in m}
        for step in ("open", "allocate")
    }
    return {"rounds": rounds, "coordinator_phase_s": phases, "domains": own_domain}


def _share(flags: list[bool]) -> float | None:
    return float(sum(flags) / len(flags)) if flags else None


# -------------------------------------------------------------------------------- aggregation


def load_runs(
    results_dir: Path, sizes: Sizes, hosts: tuple[str, ...], methods: tuple[str, ...], args: argparse.Namespace
) -> dict:
    """{host: {method: {seed: run}}} for the saved runs whose settings match the current ones."""
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for host in hosts:
        for key in methods:
            for seed in sizes.seeds:
                d = results_dir / host / key / f"seed{seed}"
                run = _load_run(d, signature(settings_for(sizes, seed, host, METHODS[key], args, Path("."))))
                if run is not None:
                    out.setdefault(host, {}).setdefault(key, {})[seed] = run
    return out


def _load_run(d: Path, expected: dict[str, Any]) -> dict | None:
    try:
        record = json.loads((d / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not C.same_run(record.get("settings", {}), expected):
        return None
    if record.get("exit_code") != 0:
        return record
    record["status"] = json.loads((d / "last_run.json").read_text())
    record["results"] = {}
    for f in sorted(d.glob("client*.results.json")):
        record["results"][f.name.split(".")[0]] = json.loads(f.read_text())
    return record


def client_domains(toy_domains: str, n_clients: int = 3) -> dict[str, str]:
    """Client name → its toy domain, as ``lada_coordinator.federation`` assigns them (in turn)."""
    pool = DOMAIN_SETS[toy_domains]
    return {f"client{i}": pool[i % len(pool)] for i in range(n_clients)}


def curves(run: dict, warm: dict, domains: dict[str, str]) -> dict[str, list[float | None]]:
    """Accuracy per round (round 0 = warm start) for every client, their mean, the LLM, and the
    LLM on each client's test split (``llm:<client>``; ``domains`` maps client to domain)."""
    rounds = sorted(run["status"]["rounds"], key=lambda r: r["round"])
    clients = sorted(warm["slm_accuracy"])
    out: dict[str, list[float | None]] = {c: [warm["slm_accuracy"][c]] for c in clients}
    out["llm"] = [warm["llm_accuracy"]]
    for c in clients:
        out[f"llm:{c}"] = [warm.get("llm_accuracy_per_client", {}).get(c)]
    for r in rounds:
        llm = r.get("llm") or {}
        for c in clients:
            out[c].append(r["clients"].get(c, {}).get("test_accuracy"))
            out[f"llm:{c}"].append((llm.get("accuracy_by_domain") or {}).get(domains.get(c, "")))
        out["llm"].append(llm.get("accuracy"))
    out["mean"] = [
        statistics.fmean(v) if None not in (v := [out[c][i] for c in clients]) else None for i in range(len(rounds) + 1)
    ]
    return out


def aggregate(runs: dict, warm: dict, sizes: Sizes, domains: dict[str, str]) -> dict:
    """Everything the report shows, reduced over seeds."""
    summary: dict[str, Any] = {}
    for host, by_method in runs.items():
        for key, by_seed in by_method.items():
            ok = {s: r for s, r in by_seed.items() if r.get("exit_code") == 0}
            failed = sorted(s for s, r in by_seed.items() if r.get("exit_code") != 0)
            entry: dict[str, Any] = {"seeds": sorted(ok), "failed_seeds": failed}
            cs = {s: curves(r, warm[host][s], domains) for s, r in ok.items() if s in warm.get(host, {})}
            if not cs:
                summary.setdefault(host, {})[key] = entry
                continue
            series = next(iter(cs.values())).keys()
            entry["curves"] = {name: [[cs[s][name][i] for s in cs] for i in range(sizes.rounds + 1)] for name in series}
            last = {s: sorted(r["status"]["rounds"], key=lambda x: x["round"])[-1] for s, r in ok.items()}
            bytes_: dict[str, dict[str, list[float]]] = {}
            for r in last.values():
                sent_total = recv_total = 0
                for c, m in r["clients"].items():
                    bytes_.setdefault(c, {"sent": [], "received": []})
                    bytes_[c]["sent"].append(m["bytes_client_sent"])
                    bytes_[c]["received"].append(m["bytes_client_received"])
                    sent_total += m["bytes_client_sent"]
                    recv_total += m["bytes_client_received"]
                bytes_.setdefault("coordinator", {"sent": [], "received": []})
                bytes_["coordinator"]["sent"].append(recv_total)
                bytes_["coordinator"]["received"].append(sent_total)
            entry["bytes"] = bytes_
            phases: dict[str, list[float]] = {}
            for r in ok.values():
                for client_rounds in r["results"].values():
                    for x in client_rounds:
                        for ph, sec in x["seconds"].items():
                            phases.setdefault(f"client {ph}", []).append(sec)
                diag = r.get("diagnostics", {})
                for ph, by_round in diag.get("coordinator_phase_s", {}).items():
                    phases.setdefault(f"coordinator {ph}", []).extend(by_round.values())
                for x in r["status"]["rounds"]:
                    phases.setdefault("coordinator close", []).append(x.get("seconds_close", float("nan")))
            entry["phase_s"] = phases
            entry["wall_s"] = [r["wall_s"] for r in ok.values()]
            entry["wall_by_seed"] = {s: r["wall_s"] for s, r in ok.items()}
            entry["llm_trained"] = [
                (x.get("llm") or {}).get("n_trained", 0) for r in ok.values() for x in r["status"]["rounds"]
            ]
            entry["loadavg"] = [x for r in ok.values() for x in (r["loadavg_before"][0], r["loadavg_after"][0])]
            entry["diag"] = _diag_summary(ok)
            if METHODS[key].allocation != "none":
                entry["diag_pairs"] = _reward_progress(ok, warm.get(host, {}))
            summary.setdefault(host, {})[key] = entry
    return summary


def _reward_progress(ok: dict[int, dict], warm: dict[int, dict]) -> list[tuple[float, float]]:
    """(reward of round t, test-accuracy change in round t) per client and round."""
    out = []
    for seed, r in ok.items():
        if seed not in warm:
            continue
        prev = dict(warm[seed]["slm_accuracy"])
        for rd in sorted(r["status"]["rounds"], key=lambda x: x["round"]):
            for name, m in rd["clients"].items():
                if m.get("n_allocated") and name in prev:
                    out.append((m["reward"], m["test_accuracy"] - prev[name]))
                prev[name] = m["test_accuracy"]
    return out


def _diag_summary(ok: dict[int, dict]) -> dict[str, Any]:
    """Mean per client and round (rounds >= 2 separately, where the filter has reward history)."""
    keys = (
        "n_allocated",
        "in_domain_allocated",
        "in_domain_candidates",
        "llm_paths_allocated",
        "reward",
        "ppl_before",
        "ppl_after",
        "lora_steps",
        "cd_pairs",
        "n_offers",
        "n_offers_taken",
    )
    out: dict[str, Any] = {
        "all": {k: [] for k in keys},
        "later": {k: [] for k in keys},
        "reasons": {},
        "path_stats": {},
    }
    for r in ok.values():
        for rd in r.get("diagnostics", {}).get("rounds", []):
            for name, st in rd.get("path_stats", {}).items():
                out["path_stats"][name] = out["path_stats"].get(name, 0) + st
            for c in rd["clients"].values():
                if "reason" in c:
                    out["reasons"][c["reason"]] = out["reasons"].get(c["reason"], 0) + 1
                for k in keys:
                    if k in ("reward", "ppl_before", "ppl_after") and not c.get("n_allocated"):
                        continue  # nothing allocated: no PPL measured, the reported reward is a placeholder
                    v = c.get(k)
                    if v is not None:
                        out["all"][k].append(v)
                        if rd["round"] >= 2:
                            out["later"][k].append(v)
    return out


# ------------------------------------------------------------------------------------ report


def final(entry: dict, name: str = "mean") -> list[float]:
    return [v for v in entry["curves"][name][-1] if v is not None] if "curves" in entry else []


def over_rounds(entry: dict, name: str = "mean") -> list[float]:
    """Per seed: mean accuracy over rounds 1..R (less noisy than the last round alone)."""
    if "curves" not in entry:
        return []
    rows = entry["curves"][name][1:]
    n_seeds = len(rows[0]) if rows else 0
    out = []
    for j in range(n_seeds):
        vals = [row[j] for row in rows if row[j] is not None]
        if vals:
            out.append(statistics.fmean(vals))
    return out


def paired_diff(a: dict, b: dict, seeds_a: list[int], seeds_b: list[int], fn=final) -> list[float]:
    """Per-seed differences a − b over the seeds both have (same data and warm starts)."""
    va, vb = dict(zip(seeds_a, fn(a))), dict(zip(seeds_b, fn(b)))
    return [va[s] - vb[s] for s in va if s in vb]


def plot(summary: dict, methods: tuple[str, ...], sizes: Sizes, out_acc: Path, out_bytes: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    hosts = [h for h in HOSTS if h in summary]
    series = ["mean", "client0", "client1", "client2", "llm"]
    titles = {
        "mean": "SLMs (mean of clients)",
        "client0": "client0",
        "client1": "client1",
        "client2": "client2",
        "llm": "LLM (all test splits)",
    }
    colors = {k: f"C{i}" for i, k in enumerate(METHODS)}
    fig, axes = plt.subplots(
        len(hosts), len(series), figsize=(3.4 * len(series), 3.0 * len(hosts)), squeeze=False, sharex=True
    )
    x = np.arange(sizes.rounds + 1)
    for i, host in enumerate(hosts):
        for j, name in enumerate(series):
            ax = axes[i][j]
            for key in methods:
                entry = summary[host].get(key, {})
                if "curves" not in entry or name not in entry["curves"]:
                    continue
                rows = [[v for v in row if v is not None] for row in entry["curves"][name]]
                m = np.array([np.mean(r) if r else np.nan for r in rows])
                s = np.array([np.std(r, ddof=1) if len(r) > 1 else 0.0 for r in rows])
                ax.plot(x, m, marker="o", ms=3, color=colors[key], label=METHODS[key].label)
                ax.fill_between(x, m - s, m + s, color=colors[key], alpha=0.15, lw=0)
            ax.set_title(f"{host}: {titles[name]}", fontsize=9)
            ax.set_xticks(x)
            ax.grid(alpha=0.3)
            if i == len(hosts) - 1:
                ax.set_xlabel("round (0 = warm start)")
            if j == 0:
                ax.set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out_acc.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_acc, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(hosts), figsize=(5.0 * len(hosts), 3.6), squeeze=False)
    for i, host in enumerate(hosts):
        ax = axes[0][i]
        for key in methods:
            entry = summary[host].get(key, {})
            if "curves" not in entry:
                continue
            per_seed_bytes = [
                statistics.fmean(
                    entry["bytes"][c]["sent"][k] + entry["bytes"][c]["received"][k]
                    for c in entry["bytes"]
                    if c != "coordinator"
                )
                for k in range(len(entry["seeds"]))
            ]
            acc = final(entry)
            ax.errorbar(
                np.mean(per_seed_bytes) / 1024,
                np.mean(acc),
                yerr=np.std(acc, ddof=1) if len(acc) > 1 else None,
                xerr=np.std(per_seed_bytes, ddof=1) / 1024 if len(per_seed_bytes) > 1 else None,
                fmt="o",
                color=colors[key],
                capsize=3,
                label=METHODS[key].label,
            )
        ax.set_xlim(left=0)
        ax.set_xlabel(f"KiB sent + received per client over {sizes.rounds} rounds")
        ax.set_ylabel(f"mean SLM accuracy after round {sizes.rounds}")
        ax.set_title(host, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(out_bytes, dpi=110)
    plt.close(fig)


def kib(values: list[float]) -> str:
    return pm([v / 1024 for v in values], 1)


def write_report(
    out: Path,
    summary: dict,
    warm: dict,
    sizes: Sizes,
    methods: tuple[str, ...],
    hosts: tuple[str, ...],
    timing: dict,
    args: argparse.Namespace,
    plots: tuple[Path, Path],
) -> None:
    from lada_client.config import DistillSettings

    hosts = tuple(h for h in hosts if h in summary)
    lines: list[str] = []
    add = lines.append
    R = sizes.rounds
    n_seeds = len(sizes.seeds)
    add("# Learning quality: LaDa against its baselines")
    add("")
    add(
        "Accuracy (answer extracted from the reasoning, exact match) of each client's SLM on its own "
        "private test split and of the LLM on all clients' test splits, per round, for LaDa and the "
        f"baselines of the method, inside the host framework{'s' if len(hosts) > 1 else ''} "
        f"{' and '.join(f'`{h}`' for h in hosts)}; bytes per party and wall time per phase. "
        "Every number below was measured by `benchmarks/quality.py` on real federations (one coordinator "
        "process and three client processes on loopback) and is regenerated from the saved runs in "
        f"`{_rel(args.results_dir)}/` by `python benchmarks/quality.py --report-only{_size_flags(sizes, args)}`."
    )
    add("")
    if n_seeds < 3 or R < 5:
        add(
            f"**Scale of this report.** The protocol asks for 3 seeds × 5 rounds; this report was produced with "
            f"**{n_seeds} seed{'s' if n_seeds != 1 else ''} × {R} rounds**"
            + (
                " (the `--quick` smoke size). "
                if args.quick
                else " so that it fits the time budget of the benchmark on the machine below. "
            )
            + (
                "With a single seed there is no spread to report: differences between methods below are "
                "*not* tested against seed-to-seed variation and must be read as indicative only. "
                if n_seeds == 1
                else ""
            )
            + "Run `python benchmarks/quality.py --seeds 0 1 2 --rounds 5` for the full protocol."
        )
        add("")
    elif not args.quick and (sizes.seeds != DEFAULT.seeds or R != DEFAULT.rounds) and _only_scale_differs(sizes):
        add(
            f"**Scale.** This report is the full protocol, {n_seeds} seeds × {R} rounds "
            f"(`--seeds {' '.join(map(str, sizes.seeds))}`). The default invocation, `python benchmarks/quality.py`, "
            f"runs {len(DEFAULT.seeds)} seed{'s' if len(DEFAULT.seeds) != 1 else ''} "
            f"({', '.join(map(str, DEFAULT.seeds))}) × "
            f"{DEFAULT.rounds} rounds with the same sizes otherwise, to stay within about 30 minutes including the "
            "warm starts; its runs are a subset of this report's (see the wall-time table per seed)."
        )
        add("")
    # ---- configuration
    add("## Set-up")
    add("")
    add("| setting | value |")
    add("|---|---|")
    pool = DOMAIN_SETS[args.toy_domains]
    add(
        f"| clients | 3: {', '.join(f'`client{i}` {d}' for i, d in enumerate(pool[:3]))} (one reasoning domain each, "
        f"non-IID; `--toy-domains {args.toy_domains}`); public pool: {', '.join(pool)} |"
    )
    unseen = ", ".join(args.llm_unseen) or "none"
    add(f"| left out of the teacher's warm-up (`--llm-unseen`) | {unseen} |")
    add(
        f"| SLMs, `mkt` host | {', '.join(f'`{p}`' for p in args.mkt_presets.split(','))} (client0, client1, client2) |"
    )
    add(
        f"| SLMs, `cotuning` host | `{COTUNING_PRESETS[0]}` for all three "
        "(adapters are averaged, so one architecture) |"
    )
    if timing.get("teacher"):
        add(f"| teacher | the checkpoint `{timing['teacher']}` (`--teacher`), as is; every run of every seed uses it |")
    else:
        add(
            f"| teacher | `llm-tiny`, warm-started once on seed {sizes.seeds[0]}'s public pool "
            f"({'all its domains' if not args.llm_unseen else 'without ' + ', '.join(args.llm_unseen)}); "
            "every run of every seed uses it |"
        )
    add(f"| seeds | {', '.join(map(str, sizes.seeds))} (each seed: its own data, tokenizer and SLM warm starts) |")
    add(f"| rounds | {R} |")
    add(f"| candidates per round | {sizes.candidates} |")
    add(f"| allocation budget B per client | {sizes.budget} (LaDa's floor ⌈B/4⌉ = {math.ceil(sizes.budget / 4)}) |")
    add(
        f"| private train / test samples per client | {sizes.n_train} / {sizes.n_test} "
        f"(accuracy on all {sizes.n_test}) |"
    )
    add(f"| training passes per round | {sizes.epochs} over private data + allocated paths (`--epochs`) |")
    add(f"| public pool | {sizes.n_public} |")
    add(f"| public questions offered to the LLM per round | {sizes.offer_questions} |")
    add(f"| the LLM's training passes per round over the SLM paths it chose | {sizes.llm_epochs} |")
    add(f"| weight of L_CD in the LLM's LoRA step (`--llm-alpha`) | {args.llm_alpha:g} |")
    add(
        f"| the LLM's own verified paths trained alongside, per SLM path (`--llm-rehearsal`) | "
        f"{args.llm_rehearsal:g}{' (off)' if not args.llm_rehearsal else ''} |"
    )
    add(f"| teacher warm-up steps | {sizes.llm_warmup_steps} (batch 32) |")
    add(f"| SLM warm-up steps | {sizes.slm_warmup_steps} (batch 32) |")
    add(f"| learnability features (`--features`) | {', '.join(f'`{f}`' for f in args.features)} |")
    add(f"| processes | coordinator + 3 clients, {args.client_threads} torch/OMP thread(s) each |")
    add(f"| seeds run side by side | {timing.get('jobs', 1)} (`--jobs`; the runs of one seed go one after the other) |")
    d = DistillSettings()
    add(
        f"| L_CD | path score = {d.cd_logprob} token log-prob, β = {d.cd_beta:g} (`DistillSettings` defaults); "
        "α per method, below |"
    )
    add(
        "| everything else | library defaults "
        "(`CoordinatorConfig`, `ClientConfig`, `DistillSettings`, `FilterConfig`) |"
    )
    add("")
    if "local" in methods and "cotuning" in hosts:
        add(
            "In the `cotuning` host the adapters are averaged every round whatever the allocation, so its "
            "local-only row is co-tuning *without distillation* (private training + secure FedAvg), not "
            "isolated training."
        )
        add("")
    add("| key | method | `--allocation` | `--alpha` |")
    add("|---|---|---|---|")
    for key in methods:
        m = METHODS[key]
        add(f"| `{key}` | {m.label} | `{m.allocation}` | {m.alpha:g} |")
    add("")
    machine = timing.get("machine", {})
    add(
        f"Machine: {machine.get('cpu_model', 'unknown')}, {machine.get('affinity') or machine.get('nproc')} CPU cores, "
        f"shared with other work (1-minute load average {_load(summary)} at the start and end of the runs); no GPU."
    )
    add("")
    add("### Wall time")
    add("")
    add(
        "Per seed, from the saved runs: building the work directories (data, tokenizer, teacher and SLM warm "
        "starts; measured when they were first built, reused afterwards), the round-0 evaluation, and the "
        "federation runs of every host and method. With `--jobs` above 1 different seeds "
        "run side by side, so these per-seed sums add up to more than the elapsed time below, and every phase "
        "time in this report includes that contention (`--jobs 1` for uncontended times)."
    )
    add("")
    add("| seed | set-up (first build) | round-0 evaluation | federation runs | total |")
    add("|---|---|---|---|---|")
    for seed in sizes.seeds:
        setup = sum(warm.get(h, {}).get(seed, {}).get("setup_s", float("nan")) for h in hosts)
        ev = sum(warm.get(h, {}).get(seed, {}).get("seconds", float("nan")) for h in hosts)
        runs_s = sum(summary[h].get(k, {}).get("wall_by_seed", {}).get(seed, 0.0) for h in hosts for k in methods)
        add(
            f"| {seed} | {_minutes(setup)} | {_minutes(ev)} | {_minutes(runs_s)} | "
            f"**{_minutes(setup + ev + runs_s)}** |"
        )
    add("")
    add(
        f"This invocation ran {timing.get('n_runs', 0)} federation(s) and reused {timing.get('reused_runs', 0)} saved "
        f"one(s); it took {_minutes(timing.get('total_s', float('nan')))} in all."
    )
    add("")
    # ---- teacher vs students at round 0
    add("## Round 0: the warm-started teacher and students")
    add("")
    add(
        "| host | seed | client0 SLM | client1 SLM | client2 SLM "
        "| LLM on client0 / client1 / client2 tests | LLM pooled |"
    )
    add("|---|---|---|---|---|---|---|")
    for host in hosts:
        for s in sizes.seeds:
            w = warm.get(host, {}).get(s)
            if not w:
                continue
            slm = w["slm_accuracy"]
            per = w["llm_accuracy_per_client"]
            add(
                f"| {host} | {s} | {slm['client0']:.3f} | {slm['client1']:.3f} | {slm['client2']:.3f} | "
                f"{per['client0']:.3f} / {per['client1']:.3f} / {per['client2']:.3f} | {w['llm_accuracy']:.3f} |"
            )
    add("")
    # ---- headline
    add("## Results")
    add("")
    add(
        f'SLM accuracy = mean of the three clients\' test accuracies. "After round {R}" is the last round; '
        f'"mean of rounds 1–{R}" averages every round\'s accuracy (less sensitive to one noisy evaluation). '
        "Δ is the paired difference to local-only over the same seeds. Values are mean ± std over seeds "
        "(std omitted with one seed)."
    )
    add("")
    for host in hosts:
        add(f"### Host `{host}`")
        add("")
        add(
            f"| method | SLM acc. after round {R} | mean of rounds 1–{R} | Δ vs local-only (round {R}) "
            f"| client0 | client1 | client2 | LLM after round {R} |"
        )
        add("|---|---|---|---|---|---|---|---|")
        local = summary[host].get("local")
        for key in methods:
            e = summary[host].get(key, {})
            if "curves" not in e:
                add(f"| {METHODS[key].label} | failed or missing (seeds {e.get('failed_seeds', [])}) | | | | | | |")
                continue
            d = (
                paired_diff(e, local, e["seeds"], local["seeds"])
                if local and "curves" in local and key != "local"
                else []
            )
            add(
                f"| {METHODS[key].label} | {pm(final(e))} | {pm(over_rounds(e))} | {_signed(d) if d else '—'} | "
                f"{pm(final(e, 'client0'))} | {pm(final(e, 'client1'))} | {pm(final(e, 'client2'))} | "
                f"{pm(final(e, 'llm'))} |"
            )
        add("")
    add(f"![accuracy per round]({_relto(plots[0], args.out.parent)})")
    add("")
    add(f"![accuracy against bytes]({_relto(plots[1], args.out.parent)})")
    add("")
    # ---- ordering
    add("## Does the paper's ordering hold?")
    add("")
    add(
        f"The paper's claim at this scale is LaDa > random allocation > all candidates / SFT-only. Checked on "
        f"the mean SLM accuracy after round {R} and, as a second view, on its mean over rounds 1–{R}; "
        "a comparison is called *clear* only if the paired difference exceeds its seed-to-seed std "
        "(never with one seed)."
    )
    add("")
    add("| host | comparison | after last round (paired Δ) | mean over rounds (paired Δ) | holds? |")
    add("|---|---|---|---|---|")
    verdicts: dict[str, list[bool]] = {}
    for host in hosts:
        for a, b in (
            ("lada", "random"),
            ("random", "all"),
            ("random", "sft"),
            ("lada", "all"),
            ("lada", "sft"),
            ("lada", "local"),
            ("lada-cover", "random"),
            ("lada-cover", "local"),
            ("lada-cover", "lada"),
        ):
            ea, eb = summary[host].get(a, {}), summary[host].get(b, {})
            if "curves" not in ea or "curves" not in eb:
                continue
            d_last = paired_diff(ea, eb, ea["seeds"], eb["seeds"])
            d_mean = paired_diff(ea, eb, ea["seeds"], eb["seeds"], over_rounds)
            holds = mean_std(d_last)[0] > 0
            verdicts.setdefault(host, []).append(holds)
            add(
                f"| {host} | {METHODS[a].label} > {METHODS[b].label} | {_signed(d_last)} | {_signed(d_mean)} | "
                f"{'yes' if holds else 'no'}{_noise(d_last)} |"
            )
    add("")
    # ---- per round tables
    add("## Accuracy per round")
    add("")
    domains = client_domains(args.toy_domains)
    unseen_series = tuple(f"llm:{c}" for c, d in domains.items() if d in args.llm_unseen)
    for host in hosts:
        add(f"### Host `{host}`")
        add("")
        add("| method | series | " + " | ".join(f"round {i}" for i in range(R + 1)) + " |")
        add("|---|---|" + "---|" * (R + 1))
        for key in methods:
            e = summary[host].get(key, {})
            if "curves" not in e:
                continue
            for name in ("client0", "client1", "client2", "mean", "llm", *unseen_series):
                label = name if name not in unseen_series else f"LLM on {name[4:]} ({domains[name[4:]]}, clients only)"
                add(f"| {METHODS[key].label} | {label} | " + " | ".join(pm(v) for v in e["curves"][name]) + " |")
        add("")
    # ---- bytes
    add("## Bytes per party")
    add("")
    add(
        f"Cumulative over the {R} rounds, KiB (application payload as counted by the coordinator, both directions; "
        "the coordinator's figures are the sums over clients)."
    )
    add("")
    add("| host | method | client0 up / down | client1 up / down | client2 up / down | coordinator sent / received |")
    add("|---|---|---|---|---|---|")
    for host in hosts:
        for key in methods:
            e = summary[host].get(key, {})
            if "bytes" not in e:
                continue
            b = e["bytes"]
            cells = [
                f"{kib(b[p]['sent'])} / {kib(b[p]['received'])}"
                for p in ("client0", "client1", "client2", "coordinator")
                if p in b
            ]
            add(f"| {host} | {METHODS[key].label} | " + " | ".join(cells) + " |")
    add("")
    # ---- wall time per phase
    add("## Wall time per phase")
    add("")
    add(
        "Seconds per round (mean ± std over clients, rounds and seeds). Client phases are measured by each client "
        "(`score` = learnability features + offered paths, `train` = rejected paths + LoRA update + ONNX re-export "
        "+ PPL before/after, `evaluate` = greedy answers on the test split); coordinator phases come from its log "
        "(`open` = LLM reasoning paths for the candidates, `close` = filter refit + LLM direction + LLM evaluation). "
        "Phases overlap across processes. Run = one whole federation including process start-up."
    )
    add("")
    phase_names = [f"client {p}" for p in CLIENT_PHASES] + [f"coordinator {p}" for p in COORDINATOR_PHASES]
    present = [
        p for p in phase_names if any(p in summary[h].get(k, {}).get("phase_s", {}) for h in hosts for k in methods)
    ]
    add("| host | method | " + " | ".join(present) + " | run |")
    add("|---|---|" + "---|" * (len(present) + 1))
    for host in hosts:
        for key in methods:
            e = summary[host].get(key, {})
            if "phase_s" not in e:
                continue
            add(
                f"| {host} | {METHODS[key].label} | "
                + " | ".join(pm(e["phase_s"].get(p, []), 1) for p in present)
                + f" | {pm(e['wall_s'], 0)} |"
            )
    add("")
    # ---- diagnostics
    add("## Diagnostics: what each method allocated and what it did to the SLMs")
    add("")
    add(
        "Means per client and round, over all rounds (and, after the slash, over rounds ≥ 2 only, where "
        "LaDa's filter has a reward history). *in-domain* = share of the allocated candidates from the "
        "client's own domain (the candidates themselves are a 4-domain mix, so uniform picking gives about "
        "a quarter); *LLM paths* = share of allocated candidates whose teacher path was sampled from the LLM "
        'rather than the pool\'s gold solution (`path_fallback="gold"`); *reward* = '
        + REWARD_NOTE
        + "; *PPL before → after* = the perplexity the reward is measured on, before and after the round; "
        "*LoRA steps* and *L_CD pairs* from the clients' training logs."
    )
    add("")
    add(
        "| host | method | allocated | in-domain | LLM paths | reward | PPL before → after "
        "| LoRA steps | L_CD pairs | selection reasons |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for host in hosts:
        for key in methods:
            e = summary[host].get(key, {})
            if "diag" not in e:
                continue
            d = e["diag"]
            a, later = d["all"], d["later"]
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["reasons"].items()))
            add(
                f"| {host} | {METHODS[key].label} | {_both(a, later, 'n_allocated', 1)} | "
                f"{_both(a, later, 'in_domain_allocated')} | "
                f"{_both(a, later, 'llm_paths_allocated')} | {_both(a, later, 'reward')} | "
                f"{_mean(a['ppl_before'])} → {_mean(a['ppl_after'])} | {_both(a, later, 'lora_steps', 1)} | "
                f"{_both(a, later, 'cd_pairs', 1)} | {reasons} |"
            )
    add("")
    add_analysis(add, summary, warm, sizes, methods, hosts, verdicts, domains, unseen_series)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")


def add_analysis(
    add,
    summary: dict,
    warm: dict,
    sizes: Sizes,
    methods: tuple[str, ...],
    hosts: tuple[str, ...],
    verdicts: dict,
    domains: dict[str, str],
    unseen: tuple[str, ...],
) -> None:
    """The reading of the numbers above; every figure is computed from the runs. ``domains`` maps
    client to domain, ``unseen`` names the ``llm:<client>`` series of the domains only clients know."""
    from lada_coordinator.allocation.eenet import FilterConfig

    add("## Analysis")
    add("")
    R, B = sizes.rounds, sizes.budget
    fc = FilterConfig(budget=B)

    def has(host: str, key: str) -> bool:
        return key in methods and "curves" in summary.get(host, {}).get(key, {})

    def dval(host: str, key: str, name: str, later: bool = False) -> float:
        e = summary.get(host, {}).get(key, {})
        if "diag" not in e:
            return float("nan")
        return mean_std(e["diag"]["later" if later else "all"][name])[0]

    def acc(host: str, key: str, fn=final) -> float:
        return mean_std(fn(summary[host][key]))[0] if has(host, key) else float("nan")

    # 1. ranking and the paper's ordering
    for host in hosts:
        order = sorted((k for k in methods if has(host, k)), key=lambda k: -acc(host, k))
        ranking = " > ".join(f"{METHODS[k].label} ({acc(host, k):.3f})" for k in order)
        add(f"* **`{host}`, ranking by mean SLM accuracy after round {R}:** {ranking}.")
        if all(has(host, k) for k in ("lada", "random", "all", "sft")):
            parts = {
                "LaDa > random": acc(host, "lada") > acc(host, "random"),
                "random > all candidates": acc(host, "random") > acc(host, "all"),
                "random > SFT-only": acc(host, "random") > acc(host, "sft"),
            }
            held = [k for k, v in parts.items() if v]
            failed = [k for k, v in parts.items() if not v]
            if not failed:
                add(
                    "  The paper's ordering LaDa > random > all candidates / SFT-only **holds** here "
                    "(see the table above for whether the margins exceed the noise)."
                )
            else:
                add(
                    f"  The paper's ordering LaDa > random > all candidates / SFT-only **does not hold** here: "
                    f"{', '.join(failed)} fail{'s' if len(failed) == 1 else ''}"
                    + (f" ({', '.join(held)} hold{'s' if len(held) == 1 else ''})" if held else "")
                    + "."
                )
        if has(host, "local"):
            better = [
                METHODS[k].label for k in methods if k != "local" and has(host, k) and acc(host, k) > acc(host, "local")
            ]
            add(
                f"  Against local-only ({acc(host, 'local'):.3f}): "
                + (
                    f"{', '.join(better)} end{'s' if len(better) == 1 else ''} higher."
                    if better
                    else "no collaborative method ends higher."
                )
            )
    add("")
    # 2. the premise: is the teacher ahead?
    for host in hosts:
        rows = []
        for name in ("client0", "client1", "client2"):
            t_acc = [
                w["llm_accuracy_per_client"][name]
                for w in warm.get(host, {}).values()
                if name in w["llm_accuracy_per_client"]
            ]
            s_acc = [w["slm_accuracy"][name] for w in warm.get(host, {}).values() if name in w["slm_accuracy"]]
            if t_acc and s_acc:
                domain = next(iter(warm[host].values()))["domains"].get(name, "?")
                rows.append((name, domain, statistics.fmean(t_acc), statistics.fmean(s_acc)))
        if not rows:
            continue
        ahead = [f"{n} ({d}: teacher {t:.2f} vs SLM {s_:.2f})" for n, d, t, s_ in rows if t - s_ >= 0.1]
        level = [f"{n} ({d}: {t:.2f} vs {s_:.2f})" for n, d, t, s_ in rows if t - s_ < 0.1]
        add(
            f"* **Is the teacher ahead of the students (`{host}`, round 0)?** After {sizes.llm_warmup_steps} "
            f"warm-up steps the teacher is at least 10 points ahead of the SLM ({sizes.slm_warmup_steps} steps) on "
            f"{', '.join(ahead) if ahead else 'no client domain'}"
            + (f"; it is not on {', '.join(level)}" if level else "")
            + "."
        )
    total = {"llm": 0, "gold": 0}
    for host in hosts:
        for key in methods:
            for k, v in summary[host].get(key, {}).get("diag", {}).get("path_stats", {}).items():
                if k in total:
                    total[k] += v
    if sum(total.values()):
        add(
            f"  Where the teacher is not ahead its sampled paths rarely reach the gold answer and the round publishes "
            'the pool\'s worked solution instead (`path_fallback="gold"`): '
            f"{total['gold'] / sum(total.values()):.0%} of "
            'all candidates carried a gold fallback, so most of what is "distilled" is supervised learning on '
            "public gold rationales, three quarters of them from other clients' domains."
        )
    add("")
    # 3. LaDa's effective budget
    for host in hosts:
        if not (has(host, "lada") and has(host, "random")):
            continue
        later = dval(host, "lada", "n_allocated", True)
        reasons = summary[host]["lada"]["diag"]["reasons"]
        if R >= 2 and later < B:
            mean_reward = dval(host, "lada", "reward")
            why = (
                f"The mean reward is {mean_reward:.2f} ({REWARD_NOTE}) and the threshold is "
                f'{fc.threshold:g} × the largest reward seen (`threshold_scale="{fc.threshold_scale}"`); '
                f"candidates under it are not sent, down to the floor ⌈B·{fc.floor_fraction:g}⌉ = {fc.floor}. "
            )
            add(
                f"* **`{host}`: LaDa spends less of the budget.** Random allocation sends B = {B} candidates per "
                f"client and round; LaDa sends {dval(host, 'lada', 'n_allocated'):.1f} on average, "
                f"{later:.1f} in rounds ≥ 2 (selection reasons over all client-rounds: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}). "
                + why
                + "Its rounds therefore train on fewer teacher paths than random allocation's."
            )
        else:
            add(
                f"* **`{host}`: LaDa's allocation size.** {dval(host, 'lada', 'n_allocated'):.1f} "
                f"per client and round on average (B = {B})."
            )
        add("")
    # 4. what the filter picks
    host0 = next((h for h in hosts if has(h, "lada")), None)
    if host0 and has(host0, "random"):
        lin, lin_later = dval(host0, "lada", "in_domain_allocated"), dval(host0, "lada", "in_domain_allocated", True)
        rin, cin = dval(host0, "random", "in_domain_allocated"), dval(host0, "lada", "in_domain_candidates")
        add(
            f"* **What the filter picks (`{host0}`).** Share of the client's own domain among LaDa's allocations: "
            f"{lin:.2f} ({lin_later:.2f} in rounds ≥ 2), against {rin:.2f} for random allocation and {cin:.2f} among "
            "the candidates. "
            + (
                "LaDa does not steer the clients towards their own domain. "
                if lin_later <= cin + 0.05
                else "LaDa does lean towards the client's own domain. "
            )
            + f"The reward it learns from is {REWARD_NOTE}; after {R} rounds each filter has seen {R} rounds "
            "of it, which is what ExploitNet is fitted on."
        )
        add("")
    # 5. reward vs. progress
    pairs = []
    for host in hosts:
        for key in methods:
            e = summary[host].get(key, {})
            for r in e.get("diag_pairs", []):
                pairs.append(r)
    if len(pairs) >= 3:
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        corr = _pearson(xs, ys)
        if math.isnan(corr):
            verdict = f"undefined: rewards or accuracy changes did not vary (n = {len(pairs)} client-rounds)."
        else:
            verdict = f"{corr:+.2f} (n = {len(pairs)} client-rounds). " + (
                "The reward is a weak guide to what improves accuracy."
                if abs(corr) < 0.3
                else "Large rewards go with accuracy *losses*: a big PPL drop on the allocated teacher paths means "
                "the SLM moved towards them, and since most of them come from other domains, away from its own task."
                if corr < 0
                else "The reward carries some signal about accuracy gains."
            )
        add(
            "* **Does the reward track learning?** Over all runs that allocate, the Pearson correlation between a "
            f"client's round reward and the change of its test accuracy in that round is {verdict}"
        )
        add("")
    # 6. training compute
    host1 = hosts[0]
    steps = {k: dval(host1, k, "lora_steps") for k in methods if has(host1, k)}
    if steps:
        add(
            f"* **Training compute.** Every round makes {sizes.epochs} pass(es) over the union of the private data and "
            "the allocated teacher paths (`DistillSettings.epochs`, `--epochs`), "
            "so local-only is the common base and the "
            f"methods differ by what the allocation adds. LoRA steps per client and round (`{host1}`): "
            + ", ".join(f"{METHODS[k].label} {v:.0f}" for k, v in steps.items())
            + "."
        )
        add("")
    # 7. L_CD
    if host0 and has(host0, "sft"):
        pairs_n, alloc_n = dval(host0, "lada", "cd_pairs"), dval(host0, "lada", "n_allocated")
        diffs = {
            h: paired_diff(
                summary[h]["lada"], summary[h]["sft"], *(sorted(summary[h][k]["seeds"]) for k in ("lada", "sft"))
            )
            for h in hosts
            if has(h, "lada") and has(h, "sft")
        }
        add(
            f"* **L_CD vs SFT-only.** The SLMs' own sampled paths are almost always wrong, so nearly every allocated "
            f"sample becomes a preference pair ({pairs_n:.1f} pairs for {alloc_n:.1f} allocated per client and round, "
            f"`{host0}`). Same allocation rule, α = 0.5 against α = 0, paired over seeds after round {R}: "
            + ", ".join(f"`{h}` {_signed(d)}{_noise(d)}" for h, d in diffs.items())
            + "."
        )
        add("")
    # 9. LLM direction and bytes
    n_trained = [r for host in hosts for key in methods for r in summary[host].get(key, {}).get("llm_trained", [])]
    if n_trained:
        moves = []
        for host in hosts:
            for key in methods:
                if not has(host, key):
                    continue
                curve = summary[host][key]["curves"]
                shown = [("pooled", curve["llm"])] + [
                    (f"{domains[name[4:]]}, clients only", curve[name]) for name in unseen if name in curve
                ]
                moves.append(
                    f"{METHODS[key].label} (`{host}`): "
                    + ", ".join(f"{what} {_mean(v[0], 3)} → {_mean(v[-1], 3)}" for what, v in shown)
                )
        add(
            f"* **The LLM direction.** Clients offer only public questions they answer correctly; the LLM trained "
            f"on {statistics.fmean(n_trained):.1f} SLM paths per round on average. Its accuracy from round 0 to "
            f"round {R} (mean over seeds): " + "; ".join(moves) + "."
        )
        add("")
    for host in hosts:
        per_method = {}
        for key in methods:
            e = summary[host].get(key, {})
            if "bytes" in e:
                clients = [c for c in e["bytes"] if c != "coordinator"]
                per_method[key] = (
                    statistics.fmean(
                        statistics.fmean(e["bytes"][c]["sent"]) + statistics.fmean(e["bytes"][c]["received"])
                        for c in clients
                    )
                    / 1024
                )
        if per_method:
            lo, hi = min(per_method.values()), max(per_method.values())
            add(
                f"* **Bytes (`{host}`).** {lo:.0f}–{hi:.0f} KiB per client over {R} rounds across methods"
                + (
                    ": every client downloads all candidates with their teacher paths in order to score them, and "
                    "an allocation is only a list of ids, so the method hardly changes the traffic"
                    if hi < 1.25 * lo
                    else ""
                )
                + ("; the masked adapters of secure aggregation dominate" if host == "cotuning" else "")
                + "."
            )
    add("")
    add(
        "How these defaults came about (a first measurement in which every collaborative method lost to "
        "local-only, what was changed and why) is recorded in [benchmarks.md](benchmarks.md#learning-quality)."
    )
    add("")


def _pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0 or n < 2:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


def _minutes(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    return f"{seconds / 60:.1f} min"


def _both(a: dict, later: dict, key: str, digits: int = 2) -> str:
    return f"{_mean(a[key], digits)} / {_mean(later[key], digits)}"


def _mean(values: list[float], digits: int = 2) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return f"{statistics.fmean(vals):.{digits}f}" if vals else "n/a"


def _noise(diffs: list[float]) -> str:
    """ " (clear)" when a paired difference exceeds its seed-to-seed std, " (within noise)" when
    not, nothing with a single seed."""
    m, s, n = mean_std(diffs)
    if n < 2 or math.isnan(s):
        return ""
    return " (clear)" if abs(m) > s else " (within noise)"


def _signed(values: list[float]) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{m:+.3f}" if n == 1 else f"{m:+.3f} ± {s:.3f}"


def _load(summary: dict) -> str:
    loads = [x for by_method in summary.values() for e in by_method.values() for x in e.get("loadavg", [])]
    if not loads:
        return "n/a"
    return f"{min(loads):.1f}–{max(loads):.1f}"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(C.REPO_ROOT))
    except ValueError:
        return str(path)


def _relto(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())


def _size_flags(sizes: Sizes, args: argparse.Namespace) -> str:
    """The command-line flags that reproduce this invocation's runs: sizes off their defaults, and
    the domain set, teacher's unseen domains, features, hosts and methods where they were chosen."""
    base = QUICK if args.quick else DEFAULT
    flags = " --quick" if args.quick else ""
    for f in fields(Sizes):
        v = getattr(sizes, f.name)
        if v != getattr(base, f.name):
            flag = "--" + f.name.replace("_", "-")
            flags += f" {flag} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
    if args.toy_domains != "rules":
        flags += f" --toy-domains {args.toy_domains}"
    if list(args.llm_unseen) != _default_unseen(args.toy_domains):
        flags += " --llm-unseen" + "".join(f" {d}" for d in args.llm_unseen)
    if tuple(args.features) != DEFAULT_FEATURES:
        flags += " --features " + " ".join(args.features)
    for flag, value in (("--hosts", args.hosts), ("--methods", args.methods)):
        if value:
            flags += f" {flag} {' '.join(value)}"
    if args.results_dir.resolve() != (C.RESULTS_DIR / ("quality_quick" if args.quick else "quality")).resolve():
        flags += f" --results-dir {_rel(args.results_dir)}"
    if args.out != (
        C.RESULTS_DIR / "quality_quick.md" if args.quick else C.REPO_ROOT / "docs" / "benchmarks_quality.md"
    ):
        flags += f" --out {_rel(args.out)}"
    return flags


def _default_unseen(toy_domains: str) -> list[str]:
    """The domains kept from the teacher's warm-up unless ``--llm-unseen`` says otherwise."""
    return ["largest"] if toy_domains == "rules" else []


def _only_scale_differs(sizes: Sizes) -> bool:
    """Whether these sizes are the defaults but for seeds and rounds (the default run is a subset)."""
    return all(
        getattr(sizes, f.name) == getattr(DEFAULT, f.name) for f in fields(Sizes) if f.name not in ("seeds", "rounds")
    )


class _Progress:
    """A shared "[k/n]" counter for the log lines of worlds running side by side."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self._lock = total, 0, threading.Lock()

    def next(self) -> str:
        with self._lock:
            self.done += 1
            return f"[{self.done}/{self.total}]"


def _new_timing() -> dict[str, Any]:
    """Per-invocation counters; each world fills its own, and main adds them up."""
    return {"setup_s": {}, "warm_eval_s": {}, "runs_s": 0.0, "n_runs": 0, "reused_runs": 0, "loadavg": []}


def _world_key(sizes: Sizes, seed: int, host: str, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """What the round-0 evaluation of a (seed, host) world depends on, and where it is saved."""
    workdir = args.cache_dir / f"seed{seed}-{host}"
    key = {"seed": seed, "host": host, **signature(settings_for(sizes, seed, host, None, args, workdir))}
    run_settings = ("allocation", "alpha", "coverage", "epochs", "rounds", "candidates", "budget")
    for name in (*run_settings, "offer_questions", "llm_epochs", "llm_alpha", "llm_rehearsal"):
        key.pop(name)
    return key, args.results_dir / host / "warmstart" / f"seed{seed}.json"


def run_world(
    sizes: Sizes,
    seed: int,
    host: str,
    methods: tuple[str, ...],
    args: argparse.Namespace,
    progress: _Progress,
    teacher_memo: dict,
    earlier_setup_s: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Prepare one (seed, host) work directory, evaluate round 0 and run every method not saved yet.

    Seeds are independent (own work directories, own ports), so ``--jobs`` of them run side by
    side; runs of one world share its directory and go one after the other. ``earlier_setup_s``
    is set-up time spent on this world before (the teacher's build, for the teacher's world).
    Returns the round-0 record, this world's timing figures and its number of failed runs."""
    workdir = args.cache_dir / f"seed{seed}-{host}"
    key, cache = _world_key(sizes, seed, host, args)
    timing = _new_timing()
    failures = 0
    todo = []
    for key_m in methods:
        dest = args.results_dir / host / key_m / f"seed{seed}"
        expected = signature(settings_for(sizes, seed, host, METHODS[key_m], args, workdir))
        saved = _load_run(dest, expected)
        if saved is not None and saved.get("exit_code") == 0 and not args.rerun:
            timing["reused_runs"] += 1
        else:
            todo.append((key_m, dest))
    if todo or not cache.exists():
        log.info("seed %d, host %s: preparing %s", seed, host, workdir)
        paths, secs = prepare_world(sizes, seed, host, args)
        secs += earlier_setup_s
        timing["setup_s"][f"seed {seed} {host}"] = secs
        log.info("seed %d, host %s: set-up done in %.0fs", seed, host, secs)
        t0 = time.perf_counter()
        w = warmstart_eval(paths, key, cache, secs, teacher_memo)
        timing["warm_eval_s"][f"seed {seed} {host}"] = time.perf_counter() - t0
        log.info(
            "seed %d, host %s: round 0: SLM accuracy %s, LLM %.3f (per client %s)",
            seed,
            host,
            {k: round(v, 3) for k, v in w["slm_accuracy"].items()},
            w["llm_accuracy"],
            {k: round(v, 3) for k, v in w["llm_accuracy_per_client"].items()},
        )
    for key_m in methods:
        match = [d for k, d in todo if k == key_m]
        if not match:
            log.info("%s %s/%s seed %d: saved results reused", progress.next(), host, key_m, seed)
            continue
        log.info("%s/%s seed %d: running %d rounds", host, key_m, seed, sizes.rounds)
        record = run_one(sizes, seed, host, METHODS[key_m], args, workdir, match[0])
        timing["runs_s"] += record["wall_s"]
        timing["n_runs"] += 1
        timing["loadavg"] += [record["loadavg_before"][0], record["loadavg_after"][0]]
        if record["exit_code"] != 0:
            failures += 1
            log.error(
                "%s %s/%s seed %d: FAILED (exit code %d); logs in %s",
                progress.next(),
                host,
                key_m,
                seed,
                record["exit_code"],
                match[0] / "logs",
            )
        else:
            log.info("%s %s/%s seed %d: done in %.0fs", progress.next(), host, key_m, seed, record["wall_s"])
    return json.loads(cache.read_text()), timing, failures


# -------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sizes, methods, hosts = resolve(args)
    started = time.perf_counter()
    timing = {**_new_timing(), "jobs": args.jobs, "teacher": str(args.teacher) if args.teacher else None}
    warm: dict[str, dict[int, dict]] = {}
    log.info("sizes %s; methods %s; hosts %s", asdict(sizes), list(methods), list(hosts))
    if not args.report_only:
        os.environ["OMP_NUM_THREADS"] = str(args.client_threads)  # inherited by coordinator and client processes
        import torch

        torch.set_num_threads(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        )
    worlds = [(seed, host) for seed in sizes.seeds for host in hosts]
    failures = 0
    if args.report_only:
        for seed, host in worlds:
            key, cache = _world_key(sizes, seed, host, args)
            if cache.exists() and C.same_run(json.loads(cache.read_text()).get("key", {}), key):
                warm.setdefault(host, {})[seed] = json.loads(cache.read_text())
    else:
        teacher_s = 0.0
        if args.teacher is None:
            # every world's runs use the teacher built in the first one, so that one goes first
            log.info("teacher: preparing %s", args.teacher_world)
            _, teacher_s = prepare_world(sizes, sizes.seeds[0], hosts[0], args)
            log.info("teacher ready in %.0fs", teacher_s)
        progress = _Progress(len(worlds) * len(methods))
        teacher_memo: dict = {}  # round-0 teacher accuracy, shared by the hosts of a seed
        with ThreadPoolExecutor(max_workers=max(1, args.jobs), thread_name_prefix="world") as pool:
            # one task per seed: its hosts' worlds in turn, since the second starts as a copy of the first
            per_seed = pool.map(
                lambda seed: [
                    run_world(
                        sizes,
                        seed,
                        h,
                        methods,
                        args,
                        progress,
                        teacher_memo,
                        teacher_s if (seed, h) == worlds[0] else 0.0,
                    )
                    for h in hosts
                ],
                sizes.seeds,
            )
            outcomes = [o for seed_outcomes in per_seed for o in seed_outcomes]
        for (seed, host), (w, t, failed) in zip(worlds, outcomes):
            warm.setdefault(host, {})[seed] = w
            failures += failed
            for name, value in t.items():
                if isinstance(value, dict):
                    timing[name].update(value)
                else:
                    timing[name] += value
    runs = load_runs(args.results_dir, sizes, hosts, methods, args)
    if not runs:
        log.error("no saved runs match these settings in %s", args.results_dir)
        return 1
    summary = aggregate(runs, warm, sizes, client_domains(args.toy_domains))
    timing["total_s"] = time.perf_counter() - started
    timing["machine"] = C.machine_info()
    if args.report_only:
        prev = args.results_dir / "summary.json"
        if prev.exists():
            old = json.loads(prev.read_text()).get("timing")
            if old:
                timing = old
    out_acc = args.out.parent / f"{args.out.stem}_accuracy.png"
    out_bytes = args.out.parent / f"{args.out.stem}_bytes.png"
    plot(summary, methods, sizes, out_acc, out_bytes)
    write_report(args.out, summary, warm, sizes, methods, hosts, timing, args, (out_acc, out_bytes))
    if not args.report_only:
        C.write_results(
            NAME,
            {
                "sizes": asdict(sizes),
                "methods": list(methods),
                "hosts": list(hosts),
                "timing": timing,
                "warmstart": warm,
                "summary": _jsonable(summary),
            },
            args.results_dir / "summary.json",
        )
    log.info(
        "report written to %s (plots %s, %s) in %.0fs total", args.out, out_acc.name, out_bytes.name, timing["total_s"]
    )
    return 1 if failures else 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


if __name__ == "__main__":
    sys.exit(main())
