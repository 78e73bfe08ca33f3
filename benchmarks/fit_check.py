"""Do the warm-started SLMs of the quality benchmark fit their own private data?

Allocation can only show in accuracy if what a student is trained on ends up in its answers. This
check reads the work directories ``benchmarks/quality.py`` built (one per seed and host) and, for
every client, compares greedy accuracy on the first questions of its *training* split with the same
on its test split (the ONNX scorer, exactly as round 0 of the benchmark evaluates), next to how many
of those test problems also appear in the training split or in the public pool (same worked
rationale, i.e. the same arithmetic fact). Students that answer few of their own training
questions will not take in a handful of allocated samples either, whatever the filter picks.

    python benchmarks/fit_check.py [--cache-dir benchmarks/.cache/quality] [--n 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def _fact(rationale: str) -> str:
    """The worked steps of a rationale without the final answer sentence: one arithmetic fact."""
    from lada_client.common.reasoning import ANSWER_PHRASE

    return rationale.split(ANSWER_PHRASE)[0].strip()


def check(workdir: Path, n: int) -> list[dict]:
    from lada_client.data.federation import FederationData

    fed = FederationData.load(workdir / "data")
    public = {_fact(s.rationale) for s in fed.public}
    rows = []
    for client in fed.clients:
        onnx_model = workdir / "models" / client.name / "onnx" / "model.onnx"
        train_facts = {_fact(s.rationale) for s in client.train}
        test = client.test[:n]
        rows.append(
            {
                "world": workdir.name,
                "client": client.name,
                "domain": client.train[0].domain if client.train else "",
                "train_accuracy": C.slm_accuracy(onnx_model, client.train[:n]),
                "test_accuracy": C.slm_accuracy(onnx_model, test),
                "test_seen_in_train": sum(_fact(s.rationale) in train_facts for s in test) / max(1, len(test)),
                "test_seen_in_public": sum(_fact(s.rationale) in public for s in test) / max(1, len(test)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache-dir", type=Path, default=C.CACHE_DIR / "quality", help="work directories of benchmarks/quality.py"
    )
    p.add_argument("--n", type=int, default=64, help="questions per split and client")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / "fit_check.json")
    args = p.parse_args(argv)
    worlds = sorted(d for d in args.cache_dir.glob("seed*-*") if (d / "data").is_dir() and (d / "models").is_dir())
    if not worlds:
        print(
            f"fit_check: no quality work directories in {args.cache_dir}; run benchmarks/quality.py first",
            file=sys.stderr,
        )
        return 1
    rows = [row for w in worlds for row in check(w, args.n)]
    print(
        C.table(
            ["world", "client", "domain", "train acc", "test acc", "test seen in train", "test seen in public"],
            [
                [
                    r["world"],
                    r["client"],
                    r["domain"],
                    r["train_accuracy"],
                    r["test_accuracy"],
                    r["test_seen_in_train"],
                    r["test_seen_in_public"],
                ]
                for r in rows
            ],
            title=f"greedy accuracy of the warm-started SLMs on the first {args.n} questions of each split",
        )
    )
    C.write_results("fit_check", {"n": args.n, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
