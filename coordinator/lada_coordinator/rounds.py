"""The round engine: drives each round through its phases, in a background thread.

Phases of round t (stored in SQLite, so a restarted coordinator resumes where it stopped):

``features``  candidates and LLM paths are published; clients upload learnability features
``training``  allocations are decided; clients train and report rewards
``closed``    filters refit on the rewards; the LLM learns from what the SLMs offered
``finished``  the last round closed

HTTP handlers only record uploads; every decision happens here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lada_client.common.wire import Candidate, PublicQuestion, RoundInfo
from lada_client.data.domains import Sample
from lada_client.scoring.features import relative_ppl_reward
from lada_client.common.secagg import SecAggError
from lada_coordinator.aggregation.secure import SecureAggregation
from lada_coordinator.allocation.allocator import LLM, SLM, Allocator
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.llm.host import LLMHost
from lada_coordinator.store import ClientRecord, Store

log = logging.getLogger(__name__)


@dataclass
class EngineStatus:
    phase: str = "waiting"
    round: int = 0
    error: str = ""


class RoundEngine(threading.Thread):
    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        public: list[Sample],
        llm_factory: Callable[[], LLMHost],
        llm_eval: list[Sample] | None = None,
    ) -> None:
        super().__init__(name="lada-round-engine", daemon=True)
        self.config = config
        self.store = store
        self.public = public
        self.public_by_id = {s.sample_id: s for s in public}
        self._llm_factory = llm_factory
        self._llm: LLMHost | None = None
        self._llm_eval = llm_eval or []
        self.secure = SecureAggregation(store, config.secagg)
        self.allocator = Allocator(store, config.allocation, {SLM: config.slm_filter, LLM: config.llm_filter}, config.seed)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.status = EngineStatus()

    # ------------------------------------------------------------------------------ helpers
    @property
    def llm(self) -> LLMHost:
        if self._llm is None:
            self._llm = self._llm_factory()
        return self._llm

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not self.stop_event.is_set() and not ready():
            self.wake.wait(0.5)
            self.wake.clear()

    def _wait_quorum(self, t: int, kind: str, expected: set[str]) -> None:
        """Wait for every expected client's ``kind`` upload; after ``phase_timeout_s``, settle for
        the quorum. A client that vanished mid-round is left out of the rest of it; below quorum
        the round keeps waiting rather than deciding on too little."""
        need = max(1, math.ceil(self.config.quorum_fraction * len(expected)))
        self._wait_arrivals(lambda: expected & set(self.store.uploads(t, kind)), expected, need, f"round {t} {kind}")

    def _wait_arrivals(self, arrived: Callable[[], set[str]], expected: set[str], need: int, what: str) -> set[str]:
        deadline = time.monotonic() + self.config.phase_timeout_s
        warned = False
        while not self.stop_event.is_set():
            got = arrived()
            if got == expected:
                return got
            if time.monotonic() > deadline:
                if len(got) >= need:
                    log.warning("%s timed out; proceeding with %d/%d, without %s", what, len(got), len(expected), sorted(expected - got))
                    return got
                if not warned:
                    log.warning("%s below quorum (%d/%d, need %d); still waiting", what, len(got), len(expected), need)
                    warned = True
            self.wake.wait(0.5)
            self.wake.clear()
        return arrived()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # keep the server answering and say what went wrong
            log.exception("round engine failed")
            self.status.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        cfg = self.config
        self._wait(lambda: len(self.store.clients()) >= cfg.min_clients)
        current = self.store.current_round()
        start, phase = (current if current else (0, "closed"))
        if phase == "finished":
            return
        t = start if phase != "closed" else start + 1
        while t <= cfg.rounds and not self.stop_event.is_set():
            if self.store.current_round() is None or self.store.current_round()[0] < t:
                self._open(t)
            phase = self.store.current_round()[1]
            if phase == "features":
                self._wait_quorum(t, "features.put", {c.client_id for c in self.store.clients()})
                self._allocate(t)
            if cfg.host_framework == "cotuning":
                self._secure_aggregation(t)
            allocated = {c.client_id for c in self.store.clients() if self.store.allocation(t, c.client_id, SLM)}
            self._wait_quorum(t, "reward.put", allocated)
            self._close(t, final=t == cfg.rounds)
            t += 1

    # ------------------------------------------------------------------------------- phases
    def _open(self, t: int) -> None:
        cfg = self.config
        self.status.phase, self.status.round = "preparing", t
        started = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, t])
        order = rng.permutation(len(self.public))
        pool = [self.public[i] for i in order[: cfg.candidates_per_round]]
        offer_pool = [self.public[i] for i in order[cfg.candidates_per_round : cfg.candidates_per_round + cfg.offer_questions]]
        paths, stats = self.llm.reasoning_paths(pool, cfg.paths_per_question, cfg.path_temperature, cfg.path_fallback, seed=cfg.seed + t)
        info = RoundInfo(
            round=t,
            phase="features",
            total_rounds=cfg.rounds,
            candidates=[
                Candidate(sample_id=p.sample.sample_id, question=p.sample.question, path=p.path, llm_logprob=p.logprob, llm_tokens=p.tokens)
                for p in paths
            ],
            offer_questions=[PublicQuestion(sample_id=s.sample_id, question=s.question, answer=s.answer) for s in offer_pool],
            feature_names=list(cfg.feature_names),
            host_framework=cfg.host_framework,
            secagg_configs=self.secure.configs(self.store.clients()) if cfg.host_framework == "cotuning" else {},
        )
        sources = {p.sample.sample_id: p.source for p in paths}
        self.store.open_round(t, info.model_dump(), {"path_sources": sources, "path_stats": stats})
        log.info("round %d open: %d candidates (paths: %s) in %.1fs", t, len(paths), stats, time.perf_counter() - started)
        self.status.phase = "features"

    def _allocate(self, t: int) -> None:
        started = time.perf_counter()
        uploads = self.store.uploads(t, "features.put")
        decided: dict[str, tuple[list[str], str]] = {}
        clients = {c.client_id: c for c in self.store.clients()}
        server_side: list[str] = []
        for client_id, up in uploads.items():
            client = clients.get(client_id)
            if client is not None and not client.capabilities.get("can_train", True):
                if self._server_checkpoint(client) is None:
                    # Capability respected: a score-only device contributes features and offered
                    # paths, but nothing is allocated to it, so no reward from it reaches its filter.
                    decided[client_id] = ([], "score_only")
                    continue
                server_side.append(client_id)
            z = np.asarray(up["features"], dtype=np.float64).reshape(len(up["sample_ids"]), -1)
            decided[client_id] = self.allocator.allocate(t, SLM, client_id, up["sample_ids"], z)
        updates = {c: self._server_update(t, clients[c], decided[c][0]) for c in server_side}
        if self.config.host_framework == "cotuning":
            info, _ = self.store.round_info(t)
            self.secure.setup(t, uploads, list(clients.values()), info["secagg_configs"])
        self.store.put_allocations(t, SLM, decided, updates)
        for client_id in server_side:  # stored: the adapters this round started from are not needed again
            for old in self._score_only_rounds(client_id, below=t):
                shutil.rmtree(old, ignore_errors=True)
        self.store.set_phase(t, "training")
        self.status.phase = "training"
        log.info(
            "round %d allocated in %.2fs: %s", t, time.perf_counter() - started,
            {c: f"{len(ids)} ({why})" for c, (ids, why) in decided.items()},
        )

    def _server_checkpoint(self, client: ClientRecord) -> Path | None:
        """Where a score-only device's model lives here, if its update is to be trained here."""
        if self.config.score_only_update != "server":
            return None
        ckpt = self.config.slm_checkpoints.get(client.model_name)
        if ckpt is None:
            log.warning("%s is score-only and no slm_checkpoints entry names its model %r: update skipped", client.name, client.model_name)
        return ckpt

    def _server_update(self, t: int, client: ClientRecord, sample_ids: list[str]) -> str:
        """Train a score-only device's LoRA adapter here, on the teacher paths allocated to it
        (there is no private data on this side, and L_CD's rejected paths would be the device's
        own, so ``score_only_distill`` defaults to α = 0), and return it as ``LoraFactor`` JSON.
        Each round's adapter is saved under ``round<t>``, starting from the latest earlier one, so a
        coordinator restarted before the allocation was stored trains the round again from the
        same start instead of twice; it keeps learning across rounds."""
        from lada_client.common.reasoning import format_prompt, format_target
        from lada_client.training.lora import LoraTrainer

        started = time.perf_counter()
        info, _ = self.store.round_info(t)
        by_id = {c["sample_id"]: c for c in info["candidates"]}
        teacher = [(format_prompt(by_id[s]["question"]), format_target(by_id[s]["path"])) for s in sample_ids if s in by_id]
        earlier = self._score_only_rounds(client.client_id, below=t)
        trainer = LoraTrainer(self.config.slm_checkpoints[client.model_name], earlier[-1] if earlier else None, seed=self.config.seed)
        if teacher:
            trainer.train_round(teacher, [], [], self.config.score_only_distill)
        trainer.save(self.config.state_dir / "score_only" / client.client_id / f"round{t}")
        factors = trainer.lora_factors()
        log.info("round %d: trained %s's adapter here on %d teacher paths in %.1fs", t, client.name, len(teacher), time.perf_counter() - started)
        return json.dumps([f.model_dump() for f in factors])

    def _score_only_rounds(self, client_id: str, below: int) -> list[Path]:
        """Saved server-side adapters of a score-only device from rounds before ``below``, oldest first."""
        root = self.config.state_dir / "score_only" / client_id
        found = [(int(p.name[5:]), p) for p in root.glob("round*") if p.name[5:].isdigit() and (p / "adapter_config.json").exists()]
        return [p for r, p in sorted(found) if r < below]

    def _secure_aggregation(self, t: int) -> None:
        """Co-tuning: run each architecture group's secure FedAvg through its three server steps.

        Each step is skipped when its output is already stored, so a restarted coordinator
        resumes the protocol. A group that cannot finish (too many dropouts) gets no average
        this round; its clients keep their own adapters.
        """
        info, _ = self.store.round_info(t)
        for group, cfg in info["secagg_configs"].items():
            if self.store.secagg(t, group, "roster") is None or self.store.secagg(t, group, "result") is not None:
                continue
            threshold = int(cfg["threshold"])
            try:
                for step, done_item, action in (
                    ("shares", "routed", self.secure.route),
                    ("masked", "unmask_request", self.secure.request_unmask),
                    ("unmask", "result", self.secure.finish),
                ):
                    if self.store.secagg(t, group, done_item) is not None:
                        continue
                    expected, _ = self.secure.progress(t, group, step)
                    need = max(threshold, math.ceil(self.config.quorum_fraction * len(expected)))
                    self._wait_arrivals(lambda: self.secure.progress(t, group, step)[1], expected, need, f"round {t} secagg {group} {step}")
                    action(t, group)
            except SecAggError as exc:
                log.warning("round %d group %s: secure aggregation failed: %s", t, group, exc)
                self.store.put_secagg(t, group, "result", {"error": str(exc)})

    def _close(self, t: int, final: bool) -> None:
        started = time.perf_counter()
        self.status.phase = "closing"
        features = self.store.uploads(t, "features.put")
        rewards = self.store.uploads(t, "reward.put")
        clients = {c.client_id: c for c in self.store.clients()}
        per_client: dict[str, dict] = {}
        for client_id, report in rewards.items():
            up = features.get(client_id)
            alloc = self.store.allocation(t, client_id, SLM)
            if up is None or alloc is None:
                continue
            index = {s: i for i, s in enumerate(up["sample_ids"])}
            z = np.asarray(up["features"], dtype=np.float64).reshape(len(up["sample_ids"]), -1)
            rows = [index[s] for s in alloc[0] if s in index]
            self.allocator.reward(t, SLM, client_id, z[rows], float(report["reward"]))
            c = clients[client_id]
            per_client[c.name] = {
                "test_accuracy": report["test_accuracy"],
                "reward": report["reward"],
                "n_allocated": report["n_allocated"],
                "bytes_client_sent": c.bytes_in,
                "bytes_client_received": c.bytes_out,
                "dp_epsilon": report.get("dp_epsilon", 0.0),
            }
        llm_metrics = self._llm_direction(t, features) if self.config.train_llm else {}
        secagg = {}
        if self.config.host_framework == "cotuning":
            info, _ = self.store.round_info(t)
            for group in info["secagg_configs"]:
                result = self.store.secagg(t, group, "result") or {}
                secagg[group] = {"contributors": len(result.get("contributors", [])), "error": result.get("error")}
        metrics = {
            "clients": per_client,
            "secagg": secagg,
            "llm": llm_metrics,
            "seconds_close": round(time.perf_counter() - started, 3),
        }
        self.store.set_phase(t, "finished" if final else "closed", metrics)
        self.status.phase = "finished" if final else "closed"
        log.info("round %d closed: %s", t, metrics)

    def _llm_direction(self, t: int, features: dict[str, dict]) -> dict:
        """Method step 6: pick SLM-offered paths that carry knowledge new to the LLM, train on them."""
        chosen: list[tuple[Sample, str, str, np.ndarray, str]] = []
        for client_id, up in features.items():
            offers = [(self.public_by_id[o["sample_id"]], o["path"]) for o in up.get("offers", []) if o["sample_id"] in self.public_by_id]
            if not offers:
                continue
            z, own = self.llm.offer_features([s for s, _ in offers], [p for _, p in offers], seed=self.config.seed + t)
            ids, _ = self.allocator.allocate(t, LLM, client_id, [s.sample_id for s, _ in offers], z)
            keep = set(ids)
            chosen.extend((s, p, o, z[i], client_id) for i, ((s, p), o) in enumerate(zip(offers, own)) if s.sample_id in keep)
        if not chosen:
            return {"n_trained": 0, "accuracy": self.llm.accuracy(self._llm_eval) if self._llm_eval else None}
        samples, paths, own = [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen]
        before = self.llm.perplexity(samples, paths)
        report = self.llm.train(samples, paths, own, self.config.llm_distill)
        after = self.llm.perplexity(samples, paths)
        reward = relative_ppl_reward(before, after)
        for client_id in {c[4] for c in chosen}:
            rows = np.stack([c[3] for c in chosen if c[4] == client_id])
            self.allocator.reward(t, LLM, client_id, rows, reward)
        return {
            "n_trained": len(chosen),
            "ppl_before": before,
            "ppl_after": after,
            "reward": reward,
            "sft_loss": report.sft_loss,
            "accuracy": self.llm.accuracy(self._llm_eval) if self._llm_eval else None,
        }
