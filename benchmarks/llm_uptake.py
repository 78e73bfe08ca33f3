"""How many paths of a domain it lacks does the toy benchmark's LLM need before it gains on it?

The LLM direction of the toy benchmark (``benchmarks/quality.py``) has one domain left out of the
teacher's warm-up (``--llm-unseen``, default ``largest``), so that only a client knows it, and asks
whether the LLM's accuracy there rises over rounds. This script bounds what any allocation could
achieve: it trains the teacher's LoRA exactly as the coordinator's LLM step does (``LLM_DISTILL``,
``llm_lora``) on the best paths a client could ever offer, the pool's gold worked solutions of the
unseen domain, in rounds of a given size, and evaluates the LLM after each round on every client's
test split. An arm ``NxR`` trains R rounds of N paths; ``+r`` adds as many gold paths of the other
domains to each round (rehearsal: the upper bound of ``--llm-rehearsal 1``). Next to it, it counts
the unseen domain's paths the clients actually offered in each world's last federation.

    python benchmarks/llm_uptake.py [--cache-dir benchmarks/.cache/quality] [--arms 32x4,250x4+r]

It reads the work directories ``benchmarks/quality.py`` built (data, and the teacher every run
uses, in the first seed's); nothing here changes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from lada_client.data.federation import FederationData

_ARM = re.compile(r"^(\d+)x(\d+)(\+r)?$")


@dataclasses.dataclass(frozen=True)
class Arm:
    per_round: int
    rounds: int
    rehearsal: bool

    @property
    def name(self) -> str:
        return f"{self.per_round}x{self.rounds}{'+r' if self.rehearsal else ''}"


def parse_arms(text: str) -> list[Arm]:
    arms = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _ARM.match(part)
        if m is None or int(m[1]) == 0 or int(m[2]) == 0:
            raise SystemExit(f"llm_uptake: --arms: {part!r} is not NxR or NxR+r with N, R > 0 (e.g. 16x8+r)")
        arms.append(Arm(int(m[1]), int(m[2]), m[3] is not None))
    if not arms:
        raise SystemExit("llm_uptake: --arms names no arm")
    return arms


def offered(workdir: Path, domain_of: dict[str, str]) -> dict[str, dict[str, int]] | None:
    """Per client, the domains of the paths it offered the LLM in the world's last federation."""
    db = workdir / "run" / "coordinator.sqlite"
    if not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = dict(con.execute("SELECT client_id, name FROM clients").fetchall())
        counts: dict[str, Counter[str]] = {}
        for client_id, payload in con.execute("SELECT client_id, payload FROM uploads WHERE kind = 'features.put'"):
            for offer in json.loads(payload).get("offers", []):
                counts.setdefault(names.get(client_id, client_id), Counter())[
                    domain_of.get(offer["sample_id"], "?")
                ] += 1
        return {name: dict(sorted(c.items())) for name, c in sorted(counts.items())}
    finally:
        con.close()


def run_arm(
    workdir: Path,
    fed: FederationData,
    teacher: Path,
    domain: str,
    arm: Arm,
    n_eval: int,
    seed: int,
    start: dict[str, float] | None,
) -> list[dict[str, Any]]:
    """The LLM's accuracy per client test split after each round of ``arm``, from a fresh adapter;
    ``start``, when given, is round 0's (the same untrained adapter in every arm: evaluated once)."""
    import numpy as np

    from lada_coordinator.config import LLM_DISTILL, CoordinatorConfig
    from lada_coordinator.llm.host import LLMHost

    pool = [s for s in fed.public if s.domain == domain]
    others = [s for s in fed.public if s.domain != domain]
    need = arm.per_round * arm.rounds
    if len(pool) < need or (arm.rehearsal and len(others) < arm.per_round):
        raise SystemExit(
            f"llm_uptake: arm {arm.name} needs {need} {domain} paths (and {arm.per_round} of other domains with +r);"
            f" {workdir.name}'s pool has {len(pool)} and {len(others)}"
        )
    rng = np.random.default_rng(seed)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    tests = {c.name: c.test[:n_eval] for c in fed.clients}
    with tempfile.TemporaryDirectory(prefix="llm-uptake-") as tmp:
        cfg = CoordinatorConfig(
            llm_dir=teacher,
            public_data=workdir / "data",
            state_dir=Path(tmp) / "state",
            db_path=Path(tmp) / "db.sqlite",
        )
        host = LLMHost(
            cfg.llm_dir,
            Path(tmp) / "adapter",
            cfg.llm_lora,
            cfg.llm_distill.max_length,
            cfg.max_new_tokens,
            compute=cfg.llm_compute,
        )
        settings = dataclasses.replace(LLM_DISTILL, seed=seed)
        rows = []
        for r in range(arm.rounds + 1):
            if r:
                batch = pool[(r - 1) * arm.per_round : r * arm.per_round]
                if arm.rehearsal:
                    batch += [others[i] for i in rng.choice(len(others), size=arm.per_round, replace=False)]
                host.train(batch, [s.rationale for s in batch], [""] * len(batch), settings)
            scores = start if r == 0 and start is not None else {n: host.accuracy(t) for n, t in tests.items()}
            rows.append({"round": r, "paths": r * arm.per_round, **scores})
            C.say(f"  {workdir.name} {arm.name} round {r}: " + ", ".join(f"{n} {rows[-1][n]:.3f}" for n in tests))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, default=C.CACHE_DIR / "quality", help="work directories of quality.py")
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="teacher checkpoint (default: the first seed's, where quality.py builds the one every run uses)",
    )
    p.add_argument("--domain", default="largest", help="the domain left out of the teacher's warm-up")
    p.add_argument("--arms", default="32x4,250x4+r", help="NxR[+r], comma-separated (see the docstring)")
    p.add_argument("--seeds", default="0,1,2", help="worlds to use (seed<N>-mkt work directories)")
    p.add_argument("--eval", type=int, default=100, help="test questions per client")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / "llm_uptake.json")
    args = p.parse_args(argv)
    arms = parse_arms(args.arms)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    if not seeds:
        p.error("--seeds names no seed")
    worlds = [args.cache_dir / f"seed{s}-mkt" for s in seeds]
    teacher = args.teacher or worlds[0] / "models" / "llm"
    missing = [str(w / "data") for w in worlds if not (w / "data" / "manifest.json").is_file()]
    if not (teacher / "config.json").is_file():
        missing.append(f"{teacher} (the teacher)")
    if missing:
        print(
            f"llm_uptake: nothing at {', '.join(missing)}; build the toy worlds with benchmarks/quality.py first",
            file=sys.stderr,
        )
        return 1
    started = time.perf_counter()
    results: dict[str, Any] = {"domain": args.domain, "eval": args.eval, "worlds": {}}
    for seed, world in zip(seeds, worlds):
        fed = FederationData.load(world / "data")
        if not any(c.domain == args.domain for c in fed.clients):
            print(f"llm_uptake: no client of {world.name} holds {args.domain!r}", file=sys.stderr)
            return 1
        entry: dict[str, Any] = {
            "offered_last_federation": offered(world, {s.sample_id: s.domain for s in fed.public}),
            "arms": {},
        }
        names = [c.name for c in fed.clients]
        start = None
        for arm in arms:
            entry["arms"][arm.name] = run_arm(world, fed, teacher, args.domain, arm, args.eval, seed, start)
            start = {n: entry["arms"][arm.name][0][n] for n in names}
        results["worlds"][world.name] = entry
    results["seconds"] = round(time.perf_counter() - started, 1)

    owner = next(c.name for c in fed.clients if c.domain == args.domain)
    names.sort(key=lambda n: n != owner)  # the unseen domain's client first
    rows = []
    for arm in arms:
        series = [results["worlds"][w.name]["arms"][arm.name] for w in worlds]
        cells = []
        for n in names:
            first, last = [s[0][n] for s in series], [s[-1][n] for s in series]
            cells.append(f"{C.mean_std(first)[0]:.3f} → {C.pm(last)}")
        rows.append([arm.name, arm.per_round * arm.rounds, *cells])
    C.say(
        C.table(
            ["arm", "paths", *[f"LLM on {n}" + (f" ({args.domain})" if n == owner else "") for n in names]],
            rows,
            title=f"the teacher's LoRA on gold {args.domain} paths: round 0 → last, mean ± std over seeds {args.seeds}",
        )
    )
    for w in worlds:
        got = results["worlds"][w.name]["offered_last_federation"]
        if got is not None:
            total = sum(c.get(args.domain, 0) for c in got.values())
            C.say(f"{w.name}: {total} {args.domain} paths offered to the LLM in its last federation ({got})")
    C.say(f"wrote {C.write_results('llm_uptake', results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
