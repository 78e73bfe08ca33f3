"""The LLM direction's scoring of SLM offers: one batch for all clients against one call per client.

Every client is offered the round's same questions, so C clients send up to C paths per question.
``RoundEngine._score_offers`` now scores all of them in one ``LLMHost.offer_features`` call, which
generates the LLM's own path once per distinct question; before, each client's offers were scored
in their own call (the LLM's own paths generated again for every client). Both run here on the same
offers with the tiny offline LLM, alternating, and must give the same features and own paths.

    python benchmarks/bench_llm_offers.py [--quick] [--clients 3] [--questions 32]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_llm_offers"


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3, help="clients offering paths for the same questions")
    p.add_argument("--questions", type=int, default=32, help="offer questions in the round")
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    questions = 8 if args.quick else args.questions

    from lada_client.config import LoraSettings
    from lada_client.data.federation import load_public
    from lada_coordinator.llm.host import LLMHost

    paths = C.world()
    public = load_public(paths["data"])[:questions]
    with tempfile.TemporaryDirectory() as tmp:
        host = LLMHost(paths["llm"], Path(tmp) / "adapter", LoraSettings(), max_new_tokens=48)
        offers = {c: [(s, f"{s.rationale} (client {c})") for s in public] for c in range(args.clients)}

        def per_client():
            return [host.offer_features([s for s, _ in o], [q for _, q in o], seed=1) for o in offers.values()]

        def batched():
            flat = [x for o in offers.values() for x in o]
            return host.offer_features([s for s, _ in flat], [q for _, q in flat], seed=1)

        per_client(), batched()  # warm-up
        times: dict[str, list[float]] = {"per_client": [], "batched": []}
        for _ in range(repeats):
            for name, fn in (("per_client", per_client), ("batched", batched)):
                started = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - started)
                if name == "per_client":
                    separate = out
                else:
                    z, own = out
                    assert own == [p for _, o in separate for p in o], "own paths differ"
                    assert np.abs(z - np.concatenate([zz for zz, _ in separate])).max() < 1e-3, "features differ"
    med = {k: C.median(v) for k, v in times.items()}
    result = {
        "clients": args.clients,
        "questions": questions,
        "offers": args.clients * questions,
        "per_client_s": med["per_client"],
        "batched_s": med["batched"],
        "batched_over_per_client": med["batched"] / med["per_client"],
        "repeats": repeats,
    }
    C.say(
        C.table(
            ["clients", "offers", "per client s", "one batch s", "ratio"],
            [[args.clients, result["offers"], med["per_client"], med["batched"], result["batched_over_per_client"]]],
        )
    )
    path = C.write_results(NAME, result, args.out)
    C.say(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
