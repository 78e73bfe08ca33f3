"""The round engine: drives each round through its phases, in a background thread.

Phases of round t (stored in SQLite, so a restarted coordinator resumes where it stopped):

``features``  candidates and LLM paths are published; clients upload learnability features
``training``  allocations are decided; clients train and report rewards
``closed``    filters refit on the rewards; the LLM learns from what the SLMs offered
``finished``  the last round closed

HTTP handlers only record uploads; every decision happens here.

Fault isolation: every use of one device's data — reading its upload back (its stored feature
matrix checked against the round, or, for a row stored without one, its payload checked again
with ``validation.py``), its filter's selection and refit, its server-side adapter, its offers to the
LLM, its secure-aggregation messages — runs isolated; a failure quarantines that device for the
round (``CoordinatorStore.quarantine``: logged, shown to the operator, the device told ``quarantined``) and
the round goes on without it. An error that is not one device's (the LLM, the database) is
logged and retried with backoff: the engine thread does not end, and because every phase is
stored, a retry — or a restart on the same state — resumes where it stopped.

Leadership: the engine runs rounds only while its replica leads (:attr:`RoundEngine.lease`). With
SQLite there is one process and it always leads. Replicas that share a PostgreSQL database each
have an engine, and only the one whose replica holds the database's engine lock runs; when that
replica dies another one's engine takes over and resumes from the stored phase, exactly as a
restart does. An engine whose replica stops leading is refused its next write
(:class:`~lada_coordinator.stores.records.LeadershipLost`), drops what it kept in memory and waits to lead
again.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lada_client.common.secagg import SecAggError, SecAggFailure, SecAggResult
from lada_client.common.wire import (
    Candidate,
    EnginePhase,
    FeatureUpload,
    LoraFactor,
    Phase,
    PublicQuestion,
    RewardReport,
    RoundInfo,
)
from lada_client.data.samples import Sample
from lada_client.scoring.reward import relative_drop
from lada_coordinator.aggregation.secure import SecureAggregation
from lada_coordinator.allocation.allocator import LLM, SLM, Allocator
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.llm.host import LLMHost, TeacherPath
from lada_coordinator.llm.paths import PathStore
from lada_coordinator.stores import CoordinatorStore, Lease, SoleLease
from lada_coordinator.stores.records import ClientRecord, LeadershipLost, PathProvenance, SecAggItem
from lada_coordinator.validation import (
    RoundContext,
    UploadRejected,
    check_features,
    check_reward,
    feature_matrix,
    matrix_fits,
    parse_payload,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_ERRORS = 20
_RETRY_BACKOFF_S = (1.0, 60.0)


def _unless_failed(outcome: T | Exception) -> T:
    """An outcome returned instead of raised (``Allocator.allocate_many``), raised again if it failed."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@dataclass
class EngineStatus:
    """What the operator sees of the engine: its phase, and its recent errors (not devices')."""

    phase: EnginePhase = EnginePhase.WAITING
    round: int = 0
    error: str = ""  # the last error that was not one device's; cleared when a round step succeeds
    errors: list[dict[str, Any]] = field(default_factory=list)
    phase_since: float = field(
        default_factory=time.time
    )  # when ``phase`` began: the dashboard tells late devices by it

    def enter(self, phase: EnginePhase, round_index: int | None = None) -> None:
        self.phase, self.phase_since = phase, time.time()
        if round_index is not None:
            self.round = round_index

    def failed(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        self.errors = [
            *self.errors,
            {"at": time.time(), "round": self.round, "phase": self.phase, "error": self.error},
        ][-_MAX_ERRORS:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "round": self.round,
            "phase_since": self.phase_since,
            "error": self.error,
            "errors": list(self.errors),
        }


class RoundEngine(threading.Thread):
    def __init__(
        self,
        config: CoordinatorConfig,
        store: CoordinatorStore,
        public: list[Sample],
        llm_factory: Callable[[], LLMHost],
        llm_eval: list[Sample] | None = None,
        lease: Lease | None = None,
    ) -> None:
        """``lease``: when this replica may run rounds (default: always, one process)."""
        super().__init__(name="lada-round-engine", daemon=True)
        self.config = config
        self.store = store
        self.public = public
        self.public_by_id = {s.sample_id: s for s in public}
        self._llm_factory = llm_factory
        self._llm: LLMHost | None = None
        self._llm_eval = llm_eval or []
        self.teacher_paths = PathStore.open(config.teacher_paths) if config.teacher_paths is not None else None
        self.lease: Lease = lease or SoleLease("this process")
        self.secure = SecureAggregation(store, config.secagg, on_offender=self._quarantine)
        self.allocator = self._new_allocator()
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.status = EngineStatus()
        #: seconds of each round's open and allocate steps, recorded with its metrics at close
        #: (a coordinator restarted mid-round records the steps it ran again)
        self._step_seconds: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------------------ helpers
    def _new_allocator(self) -> Allocator:
        cfg = self.config
        return Allocator(self.store, cfg.allocation, {SLM: cfg.slm_filter, LLM: cfg.llm_filter}, cfg.seed)

    def _check_lead(self) -> None:
        """Stop waiting as soon as this replica no longer leads (its writes would be refused)."""
        if not self.lease.leading:
            raise LeadershipLost(f"replica {self.lease.replica} no longer leads")

    @property
    def llm(self) -> LLMHost:
        if self._llm is None:
            self._llm = self._llm_factory()
        return self._llm

    def _wait(self, ready: Callable[[], bool]) -> None:
        while not self.stop_event.is_set() and not ready():
            self._check_lead()
            self.wake.wait(0.5)
            self.wake.clear()

    def _quarantine(self, t: int, client_id: str, stage: str, why: str) -> None:
        """Set one device aside for round ``t``: the round goes on without it."""
        if self.store.quarantine(t, client_id, stage, why):
            log.warning("round %d: %s quarantined at %s: %s", t, client_id, stage, why)
        self.wake.set()

    def _isolated(self, t: int, client_id: str, stage: str, work: Callable[[], T]) -> T | None:
        """Run one device's part of a step; on any error quarantine that device and return None."""
        try:
            return work()
        except LeadershipLost:  # not the device's doing: the engine stops
            raise
        except Exception as exc:  # whatever one device's data breaks must not stop the round
            log.debug("round %d: %s failed at %s", t, client_id, stage, exc_info=True)
            why = f"{exc.error}: {exc.detail}" if isinstance(exc, UploadRejected) else f"{type(exc).__name__}: {exc}"
            self._quarantine(t, client_id, stage, why)
            return None

    def _wait_quorum(self, t: int, kind: str, expected: Callable[[], set[str]]) -> None:
        """Wait for every expected client's ``kind`` upload; after ``phase_timeout_s``, settle for
        the quorum. A client that vanished mid-round is left out of the rest of it; below quorum
        the round keeps waiting rather than deciding on too little. Quarantined clients are not
        expected (``expected`` is asked again at every poll)."""

        def wanted() -> set[str]:
            return expected() - set(self.store.quarantined(t))

        need = max(1, math.ceil(self.config.quorum_fraction * len(wanted())))
        self._wait_arrivals(lambda: wanted() & self.store.uploaders(t, kind), wanted, need, f"round {t} {kind}")

    def _wait_arrivals(
        self, arrived: Callable[[], set[str]], expected: Callable[[], set[str]], need: int, what: str
    ) -> set[str]:
        deadline = time.monotonic() + self.config.phase_timeout_s
        warned = False
        while not self.stop_event.is_set():
            got, want = arrived(), expected()
            if got >= want:
                return got
            if time.monotonic() > deadline:
                if len(got) >= need:
                    log.warning(
                        "%s timed out; proceeding with %d/%d, without %s", what, len(got), len(want), sorted(want - got)
                    )
                    return got
                if not warned:
                    log.warning("%s below quorum (%d/%d, need %d); still waiting", what, len(got), len(want), need)
                    warned = True
            self._check_lead()
            self.wake.wait(0.5)
            self.wake.clear()
        return arrived()

    def run(self) -> None:
        """Run rounds until the last one closes or :attr:`stop_event` is set, while this replica
        leads. An error that is not one device's is logged, shown in :attr:`status` and retried
        with backoff from the stored state; the thread never ends on it."""
        backoff = _RETRY_BACKOFF_S[0]
        while not self.stop_event.is_set():
            if not self.lease.wait(self.stop_event):
                return
            try:
                self._run()
                return
            except LeadershipLost as exc:  # another replica's engine runs the rounds now
                log.warning("round engine stops: %s; it waits to lead again", exc)
                # what it kept in memory may be behind what the other engine stored
                self.allocator, self._llm, self._step_seconds = self._new_allocator(), None, {}
                self.status.enter(EnginePhase.WAITING)
            except Exception as exc:  # keep the server answering, say what went wrong, try again
                log.exception("round engine step failed; retrying in %.0fs", backoff)
                self.status.failed(exc)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, _RETRY_BACKOFF_S[1])

    def _run(self) -> None:
        cfg = self.config
        self._wait(lambda: len(self.store.clients()) >= cfg.min_clients)
        current = self.store.current_round()
        start, phase = current if current else (0, Phase.CLOSED)
        if phase == Phase.FINISHED:
            return
        t = start if phase != Phase.CLOSED else start + 1
        while t <= cfg.rounds and not self.stop_event.is_set():
            current = self.store.current_round()
            if current is None or current[0] < t:
                self._open(t)
                current = self.store.current_round()
            assert current is not None  # round t is open
            phase = current[1]
            if phase == Phase.FEATURES:
                self._wait_quorum(t, "features.put", lambda: {c.client_id for c in self.store.clients()})
                self._allocate(t)
            if cfg.host_framework == "cotuning":
                self._secure_aggregation(t)

            def allocated(t: int = t) -> set[str]:
                return {c.client_id for c in self.store.clients() if self.store.allocation(t, c.client_id, SLM)}

            self._wait_quorum(t, "reward.put", allocated)
            self._close(t, final=t == cfg.rounds)
            self.status.error = ""
            t += 1

    # ------------------------------------------------------------------------- stored uploads
    def _context(self, t: int) -> RoundContext:
        return RoundContext.of(self.store.round_info(t)[0])

    def _features(self, t: int, ctx: RoundContext) -> dict[str, np.ndarray]:
        """Each enrolled, not quarantined client's features this round: float32, one row per
        candidate in ``ctx.candidate_ids``' order (the HTTP layer refused any other order), one
        column per feature name. The matrices stored when the uploads were accepted are read in
        one query and checked against the round (``validation.matrix_fits``); a row stored without
        one (an older coordinator), or whose matrix does not fit, is read from its payload and
        checked again as it was on arrival. A bad row quarantines its client, never hides the others."""
        aside = self.store.quarantined(t)
        enrolled = {c.client_id for c in self.store.clients()}
        out: dict[str, np.ndarray] = {}
        for client_id, z in sorted(self.store.feature_matrices(t).items()):
            if client_id in aside or client_id not in enrolled:
                continue
            if z is not None and matrix_fits(z, ctx):
                out[client_id] = z
                continue
            if z is not None:
                log.warning(
                    "round %d: the stored feature matrix of %s does not fit the round; read its payload", t, client_id
                )
            up = self._isolated(t, client_id, "features", partial(self._upload, t, client_id, ctx))
            if up is not None:
                out[client_id] = feature_matrix(up)
        return out

    def _upload(self, t: int, client_id: str, ctx: RoundContext) -> FeatureUpload:
        """One client's feature upload parsed from its payload and checked against the round."""
        raw = self.store.raw_upload(t, client_id, "features.put")
        if raw is None:
            raise UploadRejected("malformed_payload", "the feature upload is no longer stored")
        up = parse_payload(FeatureUpload, raw)
        check_features(up, ctx)
        return up

    def _uploads(self, t: int, ctx: RoundContext, clients: Iterable[str]) -> dict[str, FeatureUpload]:
        """The full feature uploads of ``clients`` (for what the engine needs besides the features:
        secure-aggregation keys and adapter size, offers to the LLM), parsed from their payloads
        and checked against the round one by one: a bad row quarantines its client."""
        out: dict[str, FeatureUpload] = {}
        for client_id in clients:
            up = self._isolated(t, client_id, "features", partial(self._upload, t, client_id, ctx))
            if up is not None:
                out[client_id] = up
        return out

    # ------------------------------------------------------------------------------- phases
    def _open(self, t: int) -> None:
        cfg = self.config
        self.status.enter(EnginePhase.PREPARING, t)
        started, began = time.perf_counter(), time.time()
        rng = np.random.default_rng([cfg.seed, t])
        order = [self.public[i] for i in rng.permutation(len(self.public))]
        if self.teacher_paths is not None:  # paths computed ahead of time: no LLM in this process
            paths, rest, stats = self._stored_paths(order, cfg.candidates_per_round)
            offer_pool = rest[: cfg.offer_questions]
        else:
            pool, offer_pool = (
                order[: cfg.candidates_per_round],
                order[cfg.candidates_per_round :][: cfg.offer_questions],
            )
            paths, stats = self.llm.reasoning_paths(
                pool, cfg.paths_per_question, cfg.path_temperature, cfg.path_fallback, seed=cfg.seed + t
            )
        info = RoundInfo(
            round=t,
            phase=Phase.FEATURES,
            total_rounds=cfg.rounds,
            candidates=[
                Candidate(
                    sample_id=p.sample.sample_id,
                    question=p.sample.question,
                    path=p.path,
                    llm_logprob=p.logprob,
                    llm_tokens=p.tokens,
                )
                for p in paths
            ],
            offer_questions=[
                PublicQuestion(sample_id=s.sample_id, question=s.question, answer=s.answer) for s in offer_pool
            ],
            feature_names=list(cfg.feature_names),
            host_framework=cfg.host_framework,
            secagg_configs=self.secure.configs(self.store.clients()) if cfg.host_framework == "cotuning" else {},
        )
        sources = {p.sample.sample_id: p.source for p in paths}
        # the round's time counts from here: generating its paths is part of what it costs
        self.store.open_round(t, info, PathProvenance(path_sources=sources, path_stats=stats), opened_at=began)
        seconds = self._step_seconds.setdefault(t, {})["seconds_open"] = round(time.perf_counter() - started, 3)
        log.info("round %d open: %d candidates (paths: %s) in %.1fs", t, len(paths), stats, seconds)
        self.status.enter(EnginePhase.FEATURES)

    def _stored_paths(self, order: list[Sample], n: int) -> tuple[list[TeacherPath], list[Sample], dict[str, int]]:
        """The first ``n`` questions of ``order`` that have a verified path in the store, and the
        questions left for offers. Questions the store has no record of are skipped (logged)."""
        assert self.teacher_paths is not None
        chosen: list[TeacherPath] = []
        stats = {"store": 0, "unverified": 0, "missing": 0}
        at = 0
        for at, sample in enumerate(order, 1):  # noqa: B007 - read after the loop
            record = self.teacher_paths.get(sample)
            if record is None:
                stats["missing"] += 1
            elif not record.correct:
                stats["unverified"] += 1
            else:
                chosen.append(TeacherPath(sample, record.path, record.logprob, max(record.tokens, 1), "store"))
                stats["store"] += 1
                if len(chosen) == n:
                    break
        if stats["missing"]:
            log.warning(
                "teacher paths: %d drawn questions have no record in %s", stats["missing"], self.teacher_paths.path
            )
        return chosen, order[at:], stats

    def _allocate(self, t: int) -> None:
        started = time.perf_counter()
        ctx = self._context(t)
        features = self._features(t, ctx)
        clients = {c.client_id: c for c in self.store.clients()}
        if self.config.host_framework == "cotuning":  # first: a bad advert sets its client aside
            info, _ = self.store.round_info(t)
            uploads = self._uploads(t, ctx, features)
            self.secure.setup(t, uploads, list(clients.values()), info.secagg_configs)
        aside = self.store.quarantined(t)
        decided: dict[str, tuple[list[str], str]] = {}
        server_side: list[str] = []
        requests: dict[str, tuple[Sequence[str], np.ndarray]] = {}
        for client_id, z in features.items():
            client = clients[client_id]
            if client_id in aside:
                continue
            if not client.capabilities.can_train:
                if self._server_checkpoint(client) is None:
                    # Capability respected: a score-only device contributes features and offered
                    # paths, but nothing is allocated to it, so no reward from it reaches its filter.
                    decided[client_id] = ([], "score_only")
                    continue
                server_side.append(client_id)
            requests[client_id] = (ctx.candidate_ids, z)  # the upload's sample ids (check_features)
        # all clients' filters decided together; one client's failure is returned, not raised
        for client_id, outcome in self.allocator.allocate_many(t, SLM, requests).items():
            choice = self._isolated(t, client_id, "allocation", partial(_unless_failed, outcome))
            if choice is not None:
                decided[client_id] = choice
        updates: dict[str, list[LoraFactor]] = {}
        for client_id in server_side:
            if client_id in decided:

                def server_update(c: str = client_id) -> list[LoraFactor]:
                    return self._server_update(t, clients[c], decided[c][0])

                update = self._isolated(t, client_id, "server_update", server_update)
                if update is None:
                    del decided[client_id]
                else:
                    updates[client_id] = update
        self.store.put_allocations(t, SLM, decided, updates)
        for client_id in updates:  # stored: the adapters this round started from are not needed again
            for old in self._score_only_rounds(client_id, below=t):
                shutil.rmtree(old, ignore_errors=True)
        self.store.set_phase(t, Phase.TRAINING)
        self.status.enter(EnginePhase.TRAINING)
        seconds = self._step_seconds.setdefault(t, {})["seconds_allocate"] = round(time.perf_counter() - started, 3)
        log.info(
            "round %d allocated in %.2fs: %s",
            t,
            seconds,
            {c: f"{len(ids)} ({why})" for c, (ids, why) in decided.items()},
        )

    def _server_checkpoint(self, client: ClientRecord) -> Path | None:
        """Where a score-only device's model lives here, if its update is to be trained here."""
        if self.config.score_only_update != "server":
            return None
        ckpt = self.config.slm_checkpoints.get(client.model_name)
        if ckpt is None:
            log.warning(
                "%s is score-only and no slm_checkpoints entry names its model %r: update skipped",
                client.name,
                client.model_name,
            )
        return ckpt

    def _server_update(self, t: int, client: ClientRecord, sample_ids: list[str]) -> list[LoraFactor]:
        """Train a score-only device's LoRA adapter here, on the teacher paths allocated to it
        (there is no private data on this side, and L_CD's rejected paths would be the device's
        own, so ``score_only_distill`` defaults to α = 0), and return its ``LoraFactor`` list.
        Each round's adapter is saved under ``round<t>``, starting from the latest earlier one, so a
        coordinator restarted before the allocation was stored trains the round again from the
        same start instead of twice; it keeps learning across rounds."""
        from lada_client.common.reasoning import format_prompt, format_target
        from lada_client.config import ComputeSettings
        from lada_client.training.lora import LoraTrainer

        started = time.perf_counter()
        info, _ = self.store.round_info(t)
        by_id = {c.sample_id: c for c in info.candidates}
        teacher = [(format_prompt(by_id[s].question), format_target(by_id[s].path)) for s in sample_ids if s in by_id]
        earlier = self._score_only_rounds(client.client_id, below=t)
        trainer = LoraTrainer(  # float32: the factors carry digests of the device's float32 base weights
            self.config.slm_checkpoints[client.model_name],
            earlier[-1] if earlier else None,
            seed=self.config.seed,
            compute=ComputeSettings(dtype="float32"),
        )
        if teacher:
            trainer.train_round(teacher, [], [], self.config.score_only_distill)
        trainer.save(self.config.state_dir / "score_only" / client.client_id / f"round{t}")
        factors = trainer.lora_factors()
        log.info(
            "round %d: trained %s's adapter here on %d teacher paths in %.1fs",
            t,
            client.name,
            len(teacher),
            time.perf_counter() - started,
        )
        return factors

    def _score_only_rounds(self, client_id: str, below: int) -> list[Path]:
        """Saved server-side adapters of a score-only device from rounds before ``below``, oldest first."""
        root = self.config.state_dir / "score_only" / client_id
        found = [
            (int(p.name[5:]), p)
            for p in root.glob("round*")
            if p.name[5:].isdigit() and (p / "adapter_config.json").exists()
        ]
        return [p for r, p in sorted(found) if r < below]

    def _secure_aggregation(self, t: int) -> None:
        """Co-tuning: run each group's secure FedAvg through its three server steps.

        Each step is skipped when its output is already stored, so a restarted coordinator
        resumes the protocol. A step waits for its expected members (quarantined ones are not
        expected) up to ``phase_timeout_s``, then closes with who arrived; members whose messages
        fail are left out (:class:`SecureAggregation`). A group that cannot finish gets a terminal
        result with the reason; its clients keep their own adapters.
        """
        # (step, the output that closes it, the action that stores that output)
        steps: tuple[tuple[str, SecAggItem, Callable[[int, str], object]], ...] = (
            ("shares", "routed", self.secure.route),
            ("masked", "unmask_request", self.secure.request_unmask),
            ("unmask", "result", self.secure.finish),
        )
        info, _ = self.store.round_info(t)
        for group in info.secagg_configs:
            if not self.store.has_secagg(t, group, "roster") or self.store.has_secagg(t, group, "result"):
                continue
            try:
                for step, done_item, action in steps:
                    if self.store.has_secagg(t, group, done_item):
                        continue

                    def arrived(s: str = step, g: str = group) -> set[str]:
                        return self.secure.progress(t, g, s)[1]

                    def expected(s: str = step, g: str = group) -> set[str]:
                        return self.secure.progress(t, g, s)[0]

                    self._wait_arrivals(arrived, expected, 0, f"round {t} secagg {group} {step}")
                    if self.stop_event.is_set():
                        return
                    action(t, group)
            except SecAggError as exc:
                self.secure.fail(t, group, str(exc))

    def _close(self, t: int, final: bool) -> None:
        started = time.perf_counter()
        self.status.enter(EnginePhase.CLOSING)
        ctx = self._context(t)
        features = self._features(t, ctx)
        # the offers are read from the payloads only when the LLM learns from them
        offers = self._uploads(t, ctx, features) if self.config.train_llm else {}
        index = {sample_id: i for i, sample_id in enumerate(ctx.candidate_ids)}
        clients = {c.client_id: c for c in self.store.clients()}
        per_client: dict[str, dict] = {}
        aside = self.store.quarantined(t)
        with self.allocator.saving_together():  # every client's filter refit in one batched call, one commit
            for client_id, raw in sorted(self.store.raw_uploads(t, "reward.put").items()):
                z, alloc = features.get(client_id), self.store.allocation(t, client_id, SLM)
                if z is None or alloc is None or client_id not in clients or client_id in aside:
                    continue
                report = self._isolated(
                    t, client_id, "reward", partial(self._reward, t, client_id, z, index, alloc, raw)
                )
                if report is None:
                    continue
                c = clients[client_id]
                per_client[c.name] = {
                    "test_accuracy": report.test_accuracy,
                    "reward": report.reward,
                    "n_allocated": report.n_allocated,
                    "bytes_client_sent": c.bytes_in,
                    "bytes_client_received": c.bytes_out,
                    "dp_epsilon": report.dp_epsilon,
                }
        try:
            llm_metrics = self._llm_direction(t, offers) if self.config.train_llm else {}
        except Exception as exc:  # the LLM is not one device's: the round closes without its update
            log.exception("round %d: LLM update failed; closing the round without it", t)
            self.status.failed(exc)
            llm_metrics = {"n_trained": 0, "error": f"{type(exc).__name__}: {exc}"}
        secagg = {}
        if self.config.host_framework == "cotuning":
            info, _ = self.store.round_info(t)
            for group in info.secagg_configs:
                result = self.store.secagg(t, group, "result")
                secagg[group] = {
                    "contributors": len(result.contributors) if isinstance(result, SecAggResult) else 0,
                    "error": result.error if isinstance(result, SecAggFailure) else None,
                }
        names = {c.client_id: c.name for c in clients.values()}
        metrics = {
            "clients": per_client,
            "quarantined": {names.get(cid, cid): why for cid, why in self.store.quarantined(t).items()},
            "secagg": secagg,
            "llm": llm_metrics,
            **self._step_seconds.pop(t, {}),
            "seconds_close": round(time.perf_counter() - started, 3),
        }
        self.store.set_phase(t, Phase.FINISHED if final else Phase.CLOSED, metrics)
        self.status.enter(EnginePhase.FINISHED if final else EnginePhase.CLOSED)
        log.info("round %d closed: %s", t, metrics)

    def _reward(
        self,
        t: int,
        client_id: str,
        z: np.ndarray,
        index: dict[str, int],
        alloc: tuple[list[str], str],
        raw: str,
    ) -> RewardReport:
        """Read one client's reward report back and feed it to its filter (once per round); ``z``
        is its feature matrix, whose rows ``index`` names (the round's candidates)."""
        report = parse_payload(RewardReport, raw)
        check_reward(report, len(alloc[0]))
        rows = [index[s] for s in alloc[0] if s in index]
        if len(rows) != len(alloc[0]):
            raise UploadRejected("bad_reward", "the allocation names samples that are not among the round's candidates")
        rewards = (
            float(report.reward)
            if report.sample_rewards is None
            else np.asarray(report.sample_rewards, dtype=np.float64)
        )
        self.allocator.reward(t, SLM, client_id, z[rows], rewards)
        return report

    def _llm_direction(self, t: int, features: dict[str, FeatureUpload]) -> dict:
        """Method step 6: pick SLM-offered paths that carry knowledge new to the LLM, train on them.

        Every client's offers are scored by the LLM in one batch (its own path generated once per
        question); if that batch fails, each client's offers are scored again on their own, so a
        failure quarantines only the client whose offers cause it. Selection runs per client, in
        isolation. The LLM's training step on what was chosen is the coordinator's own."""
        aside = self.store.quarantined(t)
        offers: dict[str, list[tuple[Sample, str]]] = {}
        for client_id, up in features.items():
            if client_id not in aside:
                found = self._isolated(t, client_id, "llm_offers", partial(self._offers_of, up))
                if found:
                    offers[client_id] = found
        scored = self._score_offers(t, offers)
        chosen: list[tuple[Sample, str, str, np.ndarray, str]] = []
        for client_id, own_offers in offers.items():
            if client_id not in scored:  # quarantined while scored on its own
                continue
            z, own = scored[client_id]
            picked = self._isolated(
                t, client_id, "llm_offers", partial(self._pick_offers, t, client_id, own_offers, z, own)
            )
            chosen.extend(picked or [])
        if not chosen:
            return {"n_trained": 0, **self._llm_accuracy()}
        samples, paths, own = [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen]
        rehearsal = self._rehearsal(t, len(chosen))
        before = self.llm.perplexity(samples, paths)
        report = self.llm.train(samples, paths, own, self.config.llm_distill, rehearsal)
        after = self.llm.perplexity(samples, paths)
        reward = relative_drop(before, after)
        for client_id in sorted({c[4] for c in chosen}):
            rows = np.stack([c[3] for c in chosen if c[4] == client_id])
            self._isolated(t, client_id, "llm_reward", partial(self.allocator.reward, t, LLM, client_id, rows, reward))
        return {
            "n_trained": len(chosen),
            "n_rehearsed": len(rehearsal),
            "ppl_before": before,
            "ppl_after": after,
            "reward": reward,
            "sft_loss": report.sft_loss,
            **self._llm_accuracy(),
        }

    def _rehearsal(self, t: int, n_chosen: int) -> list[tuple[str, str]]:
        """``llm_rehearsal`` × ``n_chosen`` of this round's candidates whose path the LLM itself
        sampled and verified, as (question, path), drawn with the round's seed.

        Why: a handful of student paths, trained on for several passes, pull the LLM's LoRA
        towards them and away from what it answered right before (measured on the toy benchmark:
        pooled accuracy fell with every extra pass). Its own verified paths are the cheapest
        anchor: already generated this round, on public questions, and right by construction.
        Gold fallbacks are left out: they are the pool's text, not the LLM's knowledge."""
        want = math.ceil(self.config.llm_rehearsal * n_chosen)
        if want == 0:
            return []
        info, provenance = self.store.round_info(t)
        verified = [c for c in info.candidates if provenance.path_sources.get(c.sample_id) == "llm"]
        rng = np.random.default_rng([self.config.seed, t, 6])
        picked = rng.permutation(len(verified))[:want]
        return [(verified[i].question, verified[i].path) for i in sorted(picked)]

    def _llm_accuracy(self) -> dict[str, Any]:
        """The LLM on the evaluation hook's questions (local federations): pooled and per domain,
        so that a domain only the clients know shows whether the LLM direction taught it."""
        if not self._llm_eval:
            return {"accuracy": None}
        right = self.llm.correct(self._llm_eval)
        by_domain: dict[str, list[bool]] = {}
        for sample, ok in zip(self._llm_eval, right):
            by_domain.setdefault(sample.domain, []).append(ok)
        return {
            "accuracy": float(np.mean(right)),
            "accuracy_by_domain": {d: float(np.mean(v)) for d, v in sorted(by_domain.items())},
        }

    def _offers_of(self, up: FeatureUpload) -> list[tuple[Sample, str]]:
        """One client's offers as (public sample, offered path), for questions the pool holds."""
        return [(self.public_by_id[o.sample_id], o.path) for o in up.offers if o.sample_id in self.public_by_id]

    def _score_offers(
        self, t: int, offers: dict[str, list[tuple[Sample, str]]]
    ) -> dict[str, tuple[np.ndarray, list[str]]]:
        """The LLM's features and own paths of every client's offers: one batch, or, if it fails,
        one call per client (a client whose offers still fail is quarantined and left out)."""
        seed = self.config.seed + t
        flat = [o for own in offers.values() for o in own]
        try:
            z, own = self.llm.offer_features([s for s, _ in flat], [p for _, p in flat], seed=seed)
        except LeadershipLost:
            raise
        except Exception:  # which client's offers broke it is found one by one
            log.warning("round %d: scoring all offers at once failed; client by client", t, exc_info=True)
            out = {}
            for client_id, mine in offers.items():
                scored = self._isolated(
                    t,
                    client_id,
                    "llm_offers",
                    partial(self.llm.offer_features, [s for s, _ in mine], [p for _, p in mine], seed=seed),
                )
                if scored is not None:
                    out[client_id] = scored
            return out
        out, at = {}, 0
        for client_id, mine in offers.items():
            out[client_id] = (z[at : at + len(mine)], own[at : at + len(mine)])
            at += len(mine)
        return out

    def _pick_offers(
        self, t: int, client_id: str, offers: list[tuple[Sample, str]], z: np.ndarray, own: list[str]
    ) -> list[tuple[Sample, str, str, np.ndarray, str]]:
        ids, _ = self.allocator.allocate(t, LLM, client_id, [s.sample_id for s, _ in offers], z)
        keep = set(ids)
        return [(s, p, o, z[i], client_id) for i, ((s, p), o) in enumerate(zip(offers, own)) if s.sample_id in keep]
