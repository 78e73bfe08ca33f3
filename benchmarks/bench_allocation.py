"""Allocation cost: one round of EE-Net allocation for N clients x M candidates on a real SQLite store.

A round's allocation is what the round engine does once every client's features are in: read the
``features.put`` uploads from SQLite, run each client's learnability filter
(:class:`lada_coordinator.allocation.allocator.Allocator` in ``lada`` mode) and write the
allocations back in one transaction (the same steps as ``RoundEngine._allocate``). Three cases:

* **cold**: round 1, no filter has a reward yet, so each filter is created and picks k-means
  representatives (:mod:`lada_coordinator.allocation.cold_start`);
* **warm (memory)**: every filter has a reward history (one observe + refit per client beforehand)
  and is already in the allocator's memory, as in a running coordinator;
* **warm (store)**: the same, but from a fresh allocator, so every filter is first deserialised from
  SQLite, as after a coordinator restart.

Each case runs two ways, side by side in every repeat: **per client** (one ``Allocator.allocate``
call per client, the round engine's loop before ``allocate_many``) and **batched**
(``Allocator.allocate_many``: round 1's k-means for all clients in stacked arrays, the filters with
history scored in batched products; what ``RoundEngine._allocate`` calls now). Each also runs with
``torch.set_num_threads(1)`` and with all CPUs, interleaved within each repeat.

Each is timed reading the uploads two ways, in the same repeats (``--reads``): **matrices** (what
``RoundEngine._features`` reads now: every client's float32 feature matrix, stored when the HTTP
layer accepted the upload, in one query, checked against the round) and **payloads** (the engine's
read before: every JSON payload parsed into the wire model and checked again, then its features
turned into a float64 array). The uploads are stored as the server stores them, payload and matrix.
The wire model's value check is timed apart on the same features, value by value (the check before)
and vectorised (now).

Before the warm rounds, every client gets one reward (observe + refit + save, the per-client work of
closing a round), timed side by side on three thirds of the clients: one commit per client; one
commit for all (``Allocator.saving_together``) with each filter refit on its own; and one commit with
all the filters refit at the block's end in one batched call (``batched.refit_many``, what a round
close runs). ``--history batched`` gives every client its reward the last way only (for large N).

    python benchmarks/bench_allocation.py [--quick] [--clients 10 100 1000] [--candidates 64 256]
    python benchmarks/bench_allocation.py --clients 10000 --candidates 256 --threads 1 --repeats 1 \
        --history batched --no-profile --out benchmarks/results/bench_allocation_batched.json
    python benchmarks/bench_allocation.py --clients 10000 --candidates 256 --threads 1 --repeats 2 \
        --history batched --no-profile --paths batched --out benchmarks/results/bench_allocation_read.json
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_allocation"
TARGET_S = 5.0
TARGET_SIZES = ((1000, 256), (10000, 256))  # the first target, and the scale issue's
PATHS = ("per client", "batched")
READS = ("payloads", "matrices")
FEATURES = ("slm_path_nll", "slm_answer_nll", "logp_gap", "path_tokens", "slm_greedy_correct")


def features(rng: np.random.Generator, m: int) -> np.ndarray:
    """Plausible learnability features: NLLs of a few nats, a gap around 1, paths of 20-120 tokens."""
    return np.stack(
        [
            rng.uniform(0.5, 4.0, m),
            rng.uniform(0.3, 6.0, m),
            rng.normal(1.0, 1.0, m),
            rng.integers(20, 120, m).astype(np.float64),
            (rng.random(m) < 0.3).astype(np.float64),
        ],
        axis=1,
    )


def open_round(store, t: int, clients: list[str], m: int, seed: int) -> dict[str, np.ndarray]:
    """Open round ``t`` with ``m`` candidates and store every client's feature upload as the server
    does: the payload and its feature matrix."""
    from lada_client.common.wire import Candidate, FeatureUpload, RoundInfo
    from lada_coordinator.validation import feature_matrix

    ids = [f"r{t}-c{j}" for j in range(m)]
    info = RoundInfo(
        round=t,
        phase="features",
        total_rounds=1000,
        candidates=[
            Candidate(sample_id=i, question="q?", path="p. The answer is 1.", llm_logprob=-5.0, llm_tokens=9)
            for i in ids
        ],
        feature_names=list(FEATURES),
    )
    store.open_round(t, info)
    zs = {}
    with store.transaction() as db:
        for k, cid in enumerate(clients):
            z = features(np.random.default_rng([seed, t, k]), m)
            zs[cid] = z
            up = FeatureUpload(round=t, feature_names=list(FEATURES), sample_ids=ids, features=z.tolist())
            store.put_upload(db, t, cid, "features.put", up.model_dump_json(), feature_matrix(up))
    return zs


def read_payloads(store, t: int) -> dict:
    """The round engine's read before the stored matrices: each payload parsed into the wire model
    (whose value check runs), checked against the round, its features made a float64 array."""
    from lada_client.common.wire import FeatureUpload
    from lada_coordinator.validation import RoundContext, check_features, parse_payload

    ctx = RoundContext.of(store.round_info(t)[0])
    out = {}
    for client_id, raw in sorted(store.raw_uploads(t, "features.put").items()):
        up = parse_payload(FeatureUpload, raw)
        check_features(up, ctx)
        out[client_id] = (up.sample_ids, np.asarray(up.features, dtype=np.float64).reshape(len(up.sample_ids), -1))
    return out


def read_matrices(store, t: int) -> dict:
    """``RoundEngine._features`` now: the round's stored matrices in one query, each checked against
    the round; the sample ids are the round's candidates (every row here has its matrix)."""
    from lada_coordinator.validation import RoundContext, matrix_fits

    ctx = RoundContext.of(store.round_info(t)[0])
    out = {}
    for client_id, z in sorted(store.feature_matrices(t).items()):
        if z is None or not matrix_fits(z, ctx):
            raise RuntimeError(f"{client_id}: no stored matrix that fits the round")
        out[client_id] = (ctx.candidate_ids, z)
    return out


def wire_check(m: int, n: int = 1000, repeats: int = 3) -> dict:
    """The wire model's value check (``FeatureUpload._check_features``) on ``n`` uploads of ``m``
    rows, against the value-by-value check it replaced (each row through ``_finite``)."""
    from lada_client.common.wire import FEATURE_ABS_MAX, FeatureUpload, _finite

    rows = [features(np.random.default_rng([7, k]), m).tolist() for k in range(n)]

    def value_by_value() -> None:
        for upload in rows:
            for row in upload:
                _finite(row, "features", FEATURE_ABS_MAX)

    def vectorised() -> None:
        for upload in rows:
            FeatureUpload._check_features(upload)

    before = min(timeit.repeat(value_by_value, number=1, repeat=repeats)) / n
    after = min(timeit.repeat(vectorised, number=1, repeat=repeats)) / n
    return {
        "candidates": m,
        "uploads": n,
        "value_by_value_us": 1e6 * before,
        "vectorised_us": 1e6 * after,
        "ratio": before / after,
    }


def allocate_round(store, allocator, t: int, path: str = "batched", read: str = "matrices") -> dict[str, float]:
    """``RoundEngine._allocate`` for the ``mkt`` host framework, with its three stages timed;
    ``path`` "per client" is its loop of ``Allocator.allocate`` calls before ``allocate_many``;
    ``read`` "payloads" its read of the uploads before the stored matrices (the read step ends
    with every client's sample ids and feature array)."""
    from lada_coordinator.allocation.allocator import SLM

    t_read, requests = C.timed(lambda: (read_payloads if read == "payloads" else read_matrices)(store, t))

    def decide():
        if path == "per client":
            return {c: allocator.allocate(t, SLM, c, ids, z) for c, (ids, z) in requests.items()}
        out = allocator.allocate_many(t, SLM, requests)
        failed = {c: r for c, r in out.items() if isinstance(r, Exception)}
        if failed:
            raise RuntimeError(f"allocate_many failed for {len(failed)} clients: {next(iter(failed.values()))!r}")
        return out

    t_alloc, decided = C.timed(decide)
    t_write, _ = C.timed(lambda: store.put_allocations(t, SLM, decided))
    reasons = sorted({why for _, why in decided.values()})
    return {
        "total_s": t_read + t_alloc + t_write,
        "read_s": t_read,
        "allocate_s": t_alloc,
        "write_s": t_write,
        "reasons": reasons,
        "clients": len(decided),
        "loadavg_1min": os.getloadavg()[0],  # the machine is shared: its load when this run ended
        "decided": decided,  # (taken out by the caller: compared between the paths, not written)
    }


def make_allocator(store, seed: int = 0):
    from lada_coordinator.allocation.allocator import LLM, SLM, Allocator
    from lada_coordinator.allocation.eenet import FilterConfig

    return Allocator(store, "lada", {SLM: FilterConfig(), LLM: FilterConfig(budget=16)}, seed)


def profile_call(fn, top: int = 12) -> dict:
    """cProfile ``fn``; the functions with the most own time, as % of the profiled total."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({func})",
                "calls": ncalls,
                "own_pct": round(100 * tottime / total, 1),
                "cumulative_pct": round(100 * cumtime / total, 1),
            }
        )
    own = sorted(rows, key=lambda r: -r["own_pct"])[:top]
    lada = sorted(
        (
            r
            for r in rows
            if "lada" in r["function"]
            or "eenet" in r["function"]
            or "allocator" in r["function"]
            or "cold_start" in r["function"]
            or "store" in r["function"]
        ),
        key=lambda r: -r["cumulative_pct"],
    )[:top]
    return {"total_s": total, "by_own_time": own, "project_functions_by_cumulative": lada}


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=None, help="N values (default 10 100 1000; quick 10 100)")
    p.add_argument("--candidates", type=int, nargs="+", default=[64, 256], help="M values")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts (default: 1 and all CPUs)")
    p.add_argument(
        "--multi-thread-repeat-max-n",
        type=int,
        default=100,
        help="repeat multi-thread runs only up to this N (larger N: one multi-thread run)",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the cProfile of the largest case")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="allocation paths to time")
    p.add_argument("--reads", nargs="+", choices=READS, default=list(READS), help="ways of reading the uploads to time")
    p.add_argument(
        "--history",
        choices=("compare", "batched"),
        default="compare",
        help="how the clients get their first reward: three ways side by side (compare), or all in one "
        "batched round close (batched: for large N)",
    )
    args = p.parse_args()
    import torch

    cpus = len(os.sched_getaffinity(0))
    thread_counts = args.threads or sorted({1, cpus})
    ns = sorted(args.clients or ([10, 100] if args.quick else [10, 100, 1000]))
    repeats = args.repeats or (2 if args.quick else 3)
    C.say(
        f"allocation of one round, N clients x M candidates, torch threads {thread_counts}, {repeats} repeats, median"
        f" (multi-thread runs once for N > {args.multi_thread_repeat_max_n})"
    )

    def paths_for(rep: int) -> list[tuple[str, str]]:
        """The (path, read) pairs of repeat ``rep``, in alternating order."""
        pairs = [(path, read) for path in args.paths for read in args.reads]
        return pairs if rep % 2 == 0 else pairs[::-1]

    def threads_for(rep: int, n: int) -> list[int]:
        """Thread counts for repeat ``rep`` (order alternates); the slow multi-thread case of large N
        runs once only, to keep the benchmark within minutes on a small machine."""
        order = thread_counts if rep % 2 == 0 else thread_counts[::-1]
        return [t for t in order if t == 1 or rep == 0 or n <= args.multi_thread_repeat_max_n]

    rows, setup, profiles = [], [], []
    # (case, N, M, path, read) -> the first run's allocations, to compare the paths' selections
    decisions: dict[tuple, dict] = {}

    def keep(res: dict, case: str, n: int, m: int, path: str, read: str) -> dict:
        decisions.setdefault((case, n, m, path, read), res.pop("decided"))
        return res

    with tempfile.TemporaryDirectory(prefix="lada-bench-alloc-") as tmp:
        for m in args.candidates:
            from lada_coordinator.store import Store

            store = Store(Path(tmp) / f"m{m}.sqlite")
            clients = [f"client{k:05d}" for k in range(max(ns))]
            rounds = {}
            t = 0
            # ---- cold start: one fresh round per N (no filter has history yet)
            for n in ns:
                t += 1
                open_round(store, t, clients[:n], m, seed=m)
                rounds[("cold", n)] = t
            for n in ns:
                for rep in range(repeats):
                    for threads in threads_for(rep, n):
                        for path, read in paths_for(rep):
                            torch.set_num_threads(threads)
                            res = allocate_round(store, make_allocator(store), rounds[("cold", n)], path, read)
                            keep(res, "cold", n, m, path, read)
                            rows.append(
                                {"case": "cold", "path": path, "read": read, "clients": n, "candidates": m}
                                | {"threads": threads, **res}
                            )
            if args.profile and m == max(args.candidates):  # before any filter is saved: a true cold start
                torch.set_num_threads(1)
                n = max(ns)
                profiles.append(
                    {
                        "case": "cold",
                        "clients": n,
                        "candidates": m,
                        "threads": 1,
                        # (B023: profile_call runs the closure here, within this iteration)
                        **profile_call(
                            lambda: allocate_round(store, make_allocator(store), rounds[("cold", n)])  # noqa: B023
                        ),
                        "path": "batched",
                    }
                )
            # ---- history: allocate once more, then one observe + refit + save per client
            from lada_coordinator.allocation.allocator import SLM

            torch.set_num_threads(1)
            t += 1
            zs = open_round(store, t, clients, m, seed=m)
            warm = make_allocator(store)
            allocate_round(store, warm, t)
            rng = np.random.default_rng(m)

            # (B023: refit_all and the lambdas below run within this iteration, never after it)
            def refit_all(group):
                for cid in group:
                    ids, _ = store.allocation(t, cid, SLM)  # noqa: B023
                    pos = [int(s.rsplit("c", 1)[1]) for s in ids]
                    warm.reward(t, SLM, cid, zs[cid][pos], float(rng.uniform(0.0, 0.6)))  # noqa: B023

            # Allocator.reward (observe + refit + persist) is the per-client work of closing a round;
            # profile it on the first clients, time it on the rest.
            refit_all(clients[:1])  # the first refit of a process pays torch's lazy imports: not timed
            k = min(100, len(clients) // 2) if args.profile and m == max(args.candidates) else 0
            if k:
                profiles.append(
                    {
                        "case": "reward (observe+refit+save)",
                        "clients": k,
                        "candidates": m,
                        "threads": 1,
                        **profile_call(lambda: refit_all(clients[1 : k + 1])),  # noqa: B023
                    }
                )
            # side by side on three thirds of the rest: one commit per client (each reward refits
            # and saves its filter); a round close's saving_together() with each reward refitting its
            # filter (one commit for all); and saving_together() as a round close runs it, every
            # filter refit at the block's end in one batched call (batched.refit_many), one commit
            rest = clients[k + 1 :]
            third = len(rest) // 3

            def refit_together(group, batched):
                warm.batched_refit = batched  # noqa: B023 - runs within this iteration
                with warm.saving_together():  # noqa: B023
                    refit_all(group)
                warm.batched_refit = True  # noqa: B023

            timed_cases = (
                ("commit per client", refit_all, rest[:third]),
                ("one commit", lambda g: refit_together(g, False), rest[third : 2 * third]),
                ("one commit, batched refit", lambda g: refit_together(g, True), rest[2 * third :]),
            )
            if args.history == "batched":  # every client as a round close does it
                timed_cases = (("one commit, batched refit", lambda g: refit_together(g, True), rest),)
            per_client = {}
            for how, fn, group in timed_cases:
                t_refit, _ = C.timed(lambda fn=fn, group=group: fn(group))
                per_client[how] = 1000 * t_refit / len(group)
                setup.append(
                    {
                        "candidates": m,
                        "clients": len(group),
                        "saves": how,
                        "observe_refit_save_s": t_refit,
                        "per_client_ms": per_client[how],
                        "vs_commit_per_client": (
                            per_client[how] / per_client["commit per client"]
                            if "commit per client" in per_client
                            else None
                        ),
                    }
                )
                C.say(
                    f"  M={m}: Allocator.reward (observe+refit+save, {how}) for {len(group)} clients took "
                    f"{t_refit:.1f}s ({per_client[how]:.1f} ms/client, 1 thread)"
                )
            batched = per_client["one commit, batched refit"]
            if len(per_client) > 1:
                C.say(
                    f"  M={m}: batched refit vs one commit: {per_client['one commit'] / batched:.1f}x faster per"
                    f" client; vs commit per client: {per_client['commit per client'] / batched:.1f}x"
                )
            # ---- warm rounds
            for n in ns:
                t += 1
                open_round(store, t, clients[:n], m, seed=m)
                rounds[("warm", n)] = t
            for n in ns:
                for rep in range(repeats):
                    for threads in threads_for(rep, n):
                        for path, read in paths_for(rep):
                            for case in ("warm (memory)", "warm (store)"):
                                torch.set_num_threads(threads)
                                allocator = warm if case == "warm (memory)" else make_allocator(store)
                                res = allocate_round(store, allocator, rounds[("warm", n)], path, read)
                                keep(res, case, n, m, path, read)
                                rows.append(
                                    {"case": case, "path": path, "read": read, "clients": n, "candidates": m}
                                    | {"threads": threads}
                                    | res
                                )
            if args.profile and m == max(args.candidates):
                torch.set_num_threads(1)
                n = max(ns)
                profiles.append(
                    {
                        "case": "warm (store)",
                        "clients": n,
                        "candidates": m,
                        "threads": 1,
                        # (B023: profile_call runs the closure here, within this iteration)
                        **profile_call(
                            lambda: allocate_round(store, make_allocator(store), rounds[("warm", n)])  # noqa: B023
                        ),
                        "path": "batched",
                    }
                )
            store.close()

    # ---- aggregate: median per (case, path, read, N, M, threads)
    keyed: dict[tuple, list[dict]] = {}
    for r in rows:
        keyed.setdefault((r["case"], r["path"], r["read"], r["clients"], r["candidates"], r["threads"]), []).append(r)
    summary = []
    for (case, path, read, n, m, threads), rs in keyed.items():
        total = C.median([r["total_s"] for r in rs])
        summary.append(
            {
                "case": case,
                "path": path,
                "read": read,
                "clients": n,
                "candidates": m,
                "threads": threads,
                "total_s": total,
                "total_range_s": [min(r["total_s"] for r in rs), max(r["total_s"] for r in rs)],
                "read_s": C.median([r["read_s"] for r in rs]),
                "allocate_s": C.median([r["allocate_s"] for r in rs]),
                "write_s": C.median([r["write_s"] for r in rs]),
                "per_client_ms": 1000 * total / n,
                "reasons": rs[0]["reasons"],
                "repeats": len(rs),
                "loadavg_1min_range": [min(r["loadavg_1min"] for r in rs), max(r["loadavg_1min"] for r in rs)],
                "meets_target": total < TARGET_S if (n, m) in TARGET_SIZES else None,
            }
        )
    order = {"cold": 0, "warm (memory)": 1, "warm (store)": 2}
    summary.sort(
        key=lambda r: (
            order[r["case"]],
            r["candidates"],
            r["clients"],
            r["threads"],
            PATHS.index(r["path"]),
            READS.index(r["read"]),
        )
    )
    # threads ratio: time with all CPUs / time with 1 thread, per configuration; path ratio: time
    # per client / time batched, total and allocation step alone; read ratio: time reading the
    # payloads / time reading the matrices, total and read step alone
    by = {(r["case"], r["path"], r["read"], r["clients"], r["candidates"], r["threads"]): r for r in summary}
    for r in summary:
        one = by.get((r["case"], r["path"], r["read"], r["clients"], r["candidates"], 1))
        r["vs_1_thread"] = r["total_s"] / one["total_s"] if one else None
        old = by.get((r["case"], "per client", r["read"], r["clients"], r["candidates"], r["threads"]))
        mine = decisions.get((r["case"], r["clients"], r["candidates"], r["path"], r["read"]))
        theirs = decisions.get((r["case"], r["clients"], r["candidates"], "per client", r["read"]))
        parsed = decisions.get((r["case"], r["clients"], r["candidates"], r["path"], "payloads"))
        r["same_allocation_as_payloads_read"] = (
            [sum(mine[c] == parsed.get(c) for c in mine), len(mine)] if mine is not None and parsed else None
        )
        before = by.get((r["case"], r["path"], "payloads", r["clients"], r["candidates"], r["threads"]))
        r["payloads_read_over_this"] = before["total_s"] / r["total_s"] if before else None
        r["payloads_read_over_this_read"] = before["read_s"] / r["read_s"] if before else None
        # clients whose allocation (ids in order, and reason) is the per-client path's, of all
        # clients; and whose allocated set and reason are (the order is by score: two scores within
        # float32 rounding of each other can come out in either order from the batched products)
        r["same_allocation_as_per_client"] = (
            [sum(mine[c] == theirs.get(c) for c in mine), len(mine)] if mine is not None and theirs else None
        )
        r["same_set_and_reason_as_per_client"] = (
            [sum((set(ids), why) == (set(theirs[c][0]), theirs[c][1]) for c, (ids, why) in mine.items()), len(mine)]
            if mine is not None and theirs
            else None
        )
        r["per_client_path_over_this"] = old["total_s"] / r["total_s"] if old else None
        r["per_client_path_over_this_allocate"] = old["allocate_s"] / r["allocate_s"] if old else None

    C.say()
    C.say(
        C.table(
            [
                "case",
                "path",
                "read",
                "N",
                "M",
                "threads",
                "total s",
                "per client ms",
                "read s",
                "allocate s",
                "write s",
                "vs 1 thread",
                "per client / this (total, allocate)",
                "payloads / this (total, read)",
                "reason",
                "same as per client (same set)",
                "same as payloads",
                "target <5s",
            ],
            [
                [
                    r["case"],
                    r["path"],
                    r["read"],
                    r["clients"],
                    r["candidates"],
                    r["threads"],
                    r["total_s"],
                    r["per_client_ms"],
                    r["read_s"],
                    r["allocate_s"],
                    r["write_s"],
                    f"{r['vs_1_thread']:.2f}x" if r["vs_1_thread"] else "",
                    (
                        f"{r['per_client_path_over_this']:.2f}x, {r['per_client_path_over_this_allocate']:.2f}x"
                        if r["per_client_path_over_this"]
                        else ""
                    ),
                    (
                        f"{r['payloads_read_over_this']:.2f}x, {r['payloads_read_over_this_read']:.2f}x"
                        if r["payloads_read_over_this"]
                        else ""
                    ),
                    ",".join(r["reasons"]),
                    (
                        "{}/{} ({}/{})".format(
                            *r["same_allocation_as_per_client"], *r["same_set_and_reason_as_per_client"]
                        )
                        if r["same_allocation_as_per_client"]
                        else ""
                    ),
                    "{}/{}".format(*r["same_allocation_as_payloads_read"])
                    if r["same_allocation_as_payloads_read"]
                    else "",
                    "" if r["meets_target"] is None else ("met" if r["meets_target"] else "MISSED"),
                ]
                for r in summary
            ],
        )
    )
    loads = [r["loadavg_1min"] for r in rows]
    C.say(f"1-minute load average at the end of the timed rounds: {min(loads):.2f}-{max(loads):.2f}")
    checks = [wire_check(m) for m in args.candidates]
    for check in checks:
        C.say(
            f"wire model's value check, {check['candidates']} x {len(FEATURES)} per upload: value by value"
            f" {check['value_by_value_us']:.1f} us, vectorised {check['vectorised_us']:.1f} us ({check['ratio']:.2f}x)"
        )
    for prof in profiles:
        C.say(
            f"\ncProfile, {prof['case']}, N={prof['clients']} M={prof['candidates']}, 1 thread "
            f"({prof['total_s']:.2f}s profiled), top own time:"
        )
        for f in prof["by_own_time"][:8]:
            C.say(f"  {f['own_pct']:5.1f}% own {f['cumulative_pct']:5.1f}% cum  {f['calls']:>8} calls  {f['function']}")
        C.say("  project functions by cumulative time:")
        for f in prof["project_functions_by_cumulative"][:8]:
            C.say(f"  {f['cumulative_pct']:5.1f}% cum  {f['calls']:>8} calls  {f['function']}")
    path = C.write_results(
        NAME,
        {
            "settings": {
                "clients": ns,
                "candidates": args.candidates,
                "threads": thread_counts,
                "repeats": repeats,
                "quick": args.quick,
                "paths": args.paths,
                "reads": args.reads,
                "history": args.history,
            },
            "target": {"sizes": [list(size) for size in TARGET_SIZES], "seconds": TARGET_S},
            "summary": summary,
            "history_setup": setup,
            "wire_check": checks,
            "profiles": profiles,
            "runs": rows,
        },
        args.out,
    )
    C.say(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
