"""A LaDa client: one device's part in the federation, round after round.

The loop follows the method (``docs/method.md``): fetch the round's candidates, score their
learnability on the ONNX SLM, upload features (plus own paths offered to the LLM), wait for the
allocation, run the LoRA update with L_SFT + α·L_CD, measure the reward as the relative
perplexity drop on the allocated set, and report it. Private data is read here and never sent.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lada_client.common.crypto import CryptoError, Identity, PublicIdentity
from lada_client.common.reasoning import extract_answer, format_prompt, format_target, is_correct
from lada_client.common.secagg import SecAggClient, SecAggFailure, SecAggInbox, SecAggResult, UnmaskRequest
from lada_client.common.wire import (
    Ack,
    Allocation,
    AllocationQuery,
    Candidate,
    Capabilities,
    FeatureUpload,
    LoraFactor,
    PathOffer,
    Phase,
    RewardReport,
    RoundInfo,
    RoundQuery,
    SecAggPoll,
    SecAggQuery,
    SecAggReply,
    SecAggUpload,
    secagg_round_id,
)
from lada_client.config import ClientConfig
from lada_client.data.federation import load_client
from lada_client.privacy.dp import GaussianMechanism
from lada_client.progress import LogProgress, ProgressFn, bind
from lada_client.scoring.features import learnability_features, perplexity
from lada_client.scoring.onnx_slm import OnnxSLM
from lada_client.scoring.reward import HeldoutProbe, relative_drop, sample_rewards
from lada_client.transport import CoordinatorError, Transport

if TYPE_CHECKING:  # the training backend is imported when a trainer is built: score-only devices lack torch
    from lada_client.training.backend import TrainerBackend, TrainReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    round: int
    n_allocated: int
    reward: float
    ppl_before: float
    ppl_after: float
    test_accuracy: float
    seconds: dict[str, float]
    sample_rewards: list[float] | None = None
    #: the round's LoRA update (``steps``, last ``sft_loss``/``cd_loss``, ``cd_pairs``), None without one
    training: dict[str, float | int | None] | None = None


@dataclass(frozen=True)
class RoundStep:
    """What one :meth:`LadaClient.step` did: the round as the coordinator reported it, and the
    device's result if it took part. ``already_done``: the round collects features but this device
    took part in it before; ``left``: why the coordinator went on without this device in a round it
    started (it was too slow, or was set aside). With none of these the device only waited."""

    info: RoundInfo
    result: RoundResult | None = None
    already_done: bool = False
    left: str | None = None

    @property
    def ran(self) -> bool:
        return self.result is not None


@dataclass
class _Outcome:
    """What one round's update did, as the reward measures it (before/after are losses)."""

    what: str = "no update"
    before: float | None = None
    after: float | None = None
    heldout_pairs: list[tuple[str, str]] | None = None
    sample_rewards: list[float] | None = None

    @property
    def measured(self) -> tuple[float, float] | None:
        """(before, after) once both are measured, else None."""
        if self.before is None or self.after is None:
            return None
        return self.before, self.after

    def perplexities(self) -> tuple[float, float]:
        """(before, after) as perplexities for the report: exp of an NLL, a PPL as is, 1 if unmeasured."""
        if self.measured is None:
            return 1.0, 1.0
        before, after = self.measured
        if self.what.endswith("NLL"):
            return float(np.exp(min(before, 25.0))), float(np.exp(min(after, 25.0)))
        return float(before), float(after)


class LadaClient:
    """Runs rounds against a coordinator. Use as a context manager to close the connection."""

    def __init__(self, config: ClientConfig, progress: ProgressFn | None = None) -> None:
        """``progress(task, done, total)`` hears the long loops of a round (scoring, offers,
        training, evaluation); default: log lines at each quarter (:mod:`lada_client.progress`)."""
        self.config = config
        self.progress: ProgressFn = progress or LogProgress(log, f"{config.name} ")
        self._t = 0  # the round being worked on, for progress task names
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = Identity.load_or_create(config.state_dir / "identity.key")
        self.transport = Transport(
            config.coordinator_url,
            self.identity,
            config.request_timeout_s,
            verify=str(config.ca_cert) if config.ca_cert else True,
            upload_chunk_bytes=config.upload_chunk_bytes,
            seq_path=config.state_dir / "seq",
        )
        self.data = load_client(config.data_dir, config.name)
        self.slm = self.load_slm(self._scoring_path())
        self._trainer: TrainerBackend | None = None
        self._trainer_future: Future[TrainerBackend] | None = None
        self._round_start_adapter: np.ndarray | None = None
        # The held-out probe (pairs, answer NLL) measured on the current scorer: the "after" of one
        # round is the "before" of the next unless the scorer changed in between (`_reload_slm`).
        self._probe_memo: tuple[list[tuple[str, str]], float] | None = None
        self._done_rounds: set[int] = set()
        self.privacy = GaussianMechanism(config.dp)
        self.model_name = config.model_name or self._default_model_name()
        support = config.training_support()
        # A device without base_model_dir is score-only by choice; one configured to train that
        # cannot (packages or files missing) says why before it enrolls as score-only.
        if not support and (config.train_backend == "ort" or config.base_model_dir is not None):
            log.warning(
                "%s: train_backend=%r but this device cannot train: %s; it will only score",
                config.name,
                config.train_backend,
                support.reason,
            )

    def _task(self, name: str) -> Callable[[int, int], None] | None:
        return bind(self.progress, f"round {self._t} {name}" if self._t else name)

    def __enter__(self) -> LadaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.close()

    # ---------------------------------------------------------------------------------- state
    @property
    def _adapter_dir(self) -> Path:
        return self.config.state_dir / "adapter"

    def load_slm(self, path: Path) -> OnnxSLM:
        """Load a scoring model; override to choose execution providers or session options
        (the client reloads through here after every adapter refresh)."""
        return OnnxSLM(
            path,
            max_length=self.config.distill.max_length,
            max_new_tokens=self.config.max_new_tokens,
            intra_op_threads=self.config.threads,
            logits_budget_bytes=self.config.logits_budget_mib << 20,
            cpu_mem_arena=self.config.cpu_mem_arena,
        )

    @property
    def client_id(self) -> str | None:
        """The id given at enrollment (restored from ``state_dir``), or None before it."""
        if self.transport.client_id is None and (self.config.state_dir / "enrollment.json").exists():
            self.enroll()
        return self.transport.client_id

    def train_local(self, epochs: int | None = None, max_samples: int | None = None) -> dict[str, float]:
        """A LoRA update on private data alone (no round, no coordinator), then a scorer refresh.

        For devices that learn between rounds, e.g. while charging. Returns steps, loss and the
        perplexity of the private samples before and after.
        """
        from dataclasses import replace

        samples = self.data.train[: max_samples or len(self.data.train)]
        if not samples:
            raise ValueError(f"client {self.config.name!r} has no private training data")
        pairs = [(format_prompt(s.question), format_target(s.target)) for s in samples]
        prompts, targets = [p for p, _ in pairs], [c for _, c in pairs]
        before = perplexity(self.slm.completion_logprobs(prompts, targets, self.config.batch_size))
        settings = replace(self.config.distill, epochs=epochs or self.config.distill.epochs)
        report = self.trainer.train_round([], [], pairs, settings, progress=self._task("local training"))
        self.export_adapter()
        after = perplexity(self.slm.completion_logprobs(prompts, targets, self.config.batch_size))
        return {
            "steps": report.steps,
            "sft_loss": report.sft_loss,
            "ppl_before": before,
            "ppl_after": after,
            "n_samples": len(samples),
        }

    def _default_model_name(self) -> str:
        if self.config.base_model_dir is not None:
            from lada_client.models.checkpoint import architecture_id

            return architecture_id(self.config.base_model_dir)
        if self.config.train_backend == "ort" and self.config.ort_artifacts is not None:
            from lada_client.training.ort_backend import artifact_architecture_id

            return artifact_architecture_id(self.config.ort_artifacts) or self.config.scoring_model.stem
        return self.config.scoring_model.stem

    @property
    def trainer(self) -> TrainerBackend:  # built lazily: scoring-only devices have no torch
        if self._trainer is None:
            future = self._trainer_future or self._start_loading_trainer()
            try:
                self._trainer = future.result()
            finally:
                self._trainer_future = None  # after a failure, the next use tries again
        return self._trainer

    def _start_loading_trainer(self) -> Future[TrainerBackend]:
        """Build the trainer (config.train_backend: "torch" or "ort") in a background thread.

        Importing torch, transformers and peft and loading the checkpoint costs seconds of CPU. Started
        when the client starts running, it overlaps enrollment and the wait for the coordinator to open
        the first round, instead of delaying that round's training. Errors surface at first use.
        """
        from lada_client.training.trainers import trainer_for

        future: Future = Future()

        def load() -> None:
            try:
                if self.config.threads and self.config.train_backend == "torch":
                    import torch

                    torch.set_num_threads(self.config.threads)
                future.set_result(trainer_for(self.config, self._adapter_dir))
            except BaseException as exc:  # noqa: BLE001 - re-raised by .result() in the caller's thread
                future.set_exception(exc)

        threading.Thread(target=load, name=f"{self.config.name}-trainer-load", daemon=True).start()
        self._trainer_future = future
        return future

    def _scoring_path(self) -> Path:
        """The current scoring model: the device's own re-export once it has trained, else the base."""
        own = self.config.state_dir / "model.onnx"
        if own.exists():
            return own
        return self.config.scoring_model

    def capabilities(self) -> Capabilities:
        """What this device declares at enrollment: it always scores, and trains only where
        :meth:`ClientConfig.training_support` says it can (the coordinator allocates nothing to
        a score-only device, or trains its adapter for it)."""
        return Capabilities(can_score=True, can_train=self.config.can_train, can_train_ort=self.config.can_train_ort)

    def enroll(self) -> str:
        """Enroll once with the one-time token; later runs reuse the stored enrollment."""
        record = self.config.state_dir / "enrollment.json"
        if record.exists():
            try:
                saved = json.loads(record.read_text())
                coordinator = PublicIdentity.from_b64(saved["sign_key"], saved["kex_key"])
            except (ValueError, KeyError, TypeError, CryptoError) as exc:
                raise ValueError(f"enrollment record {record} is damaged ({exc}); remove it and enroll again") from exc
            self.transport.attach(saved["client_id"], coordinator)
            return saved["client_id"]
        if not self.config.token:
            raise CoordinatorError("this device is not enrolled and no enrollment token was given (--token)")
        client_id = self.transport.enroll(
            self.config.token,
            self.config.name,
            domain=self.config.domain or self.data.domain,
            model_name=self.model_name,
            capabilities=self.capabilities(),
        )
        assert self.transport.coordinator is not None
        staged = record.with_suffix(".tmp")
        staged.write_text(json.dumps({"client_id": client_id, **self.transport.coordinator.to_b64()}))
        os.replace(staged, record)  # a crash never leaves a half-written enrollment
        log.info(
            "%s enrolled as %s (coordinator key %s…)",
            self.config.name,
            client_id,
            self.transport.coordinator.fingerprint()[:16],
        )
        return client_id

    # --------------------------------------------------------------------------------- rounds
    def run(self, max_rounds: int | None = None) -> list[RoundResult]:
        """Take part in rounds until the coordinator says the federation is finished."""
        if self.config.can_train and self._trainer is None and self._trainer_future is None:
            self._start_loading_trainer()
        self.enroll()
        results: list[RoundResult] = []
        known_round = 0
        deadline = time.monotonic() + self.config.max_wait_s
        while max_rounds is None or len(results) < max_rounds:
            step = self.step(known_round)
            known_round = step.info.round
            if step.info.phase == Phase.FINISHED:
                log.info("%s: federation finished after round %d", self.config.name, step.info.round)
                break
            if step.result is not None:
                results.append(step.result)
            if step.ran or step.left is not None:
                deadline = time.monotonic() + self.config.max_wait_s
                continue
            if time.monotonic() > deadline:
                raise CoordinatorError(f"no new round within {self.config.max_wait_s:.0f}s")
            time.sleep(self.config.poll_interval_s)
        return results

    @property
    def done_rounds(self) -> frozenset[int]:
        """Rounds this device took part in or left (it never runs one twice)."""
        return frozenset(self._done_rounds)

    def mark_done(self, rounds: Iterable[int]) -> None:
        """Rounds an embedding remembers from an earlier process (e.g. a mobile app's saved state):
        :meth:`step` will not take part in them again."""
        self._done_rounds.update(int(r) for r in rounds)

    def step(self, known_round: int = 0) -> RoundStep:
        """One poll of the coordinator and, if a round is collecting features that this device has not
        done, the whole round: the unit a background scheduler (a mobile worker) runs, and what
        :meth:`run` loops over. ``known_round`` is the last round seen (the reply must not go back).
        Needs an enrolled device (:meth:`enroll`)."""
        info = self.transport.call("round.get", RoundQuery(), known_round, RoundInfo)
        if info.phase != Phase.FEATURES:
            return RoundStep(info)
        if info.round in self._done_rounds:
            return RoundStep(info, already_done=True)
        try:
            return RoundStep(info, result=self.run_round(info))
        except CoordinatorError as exc:
            if exc.status != 409:
                raise
            # The round moved on without us (we were too slow and it closed at quorum), or the
            # coordinator set this device aside for the round (error "quarantined", with why).
            log.warning("%s: left round %d: %s", self.config.name, info.round, exc)
            self._done_rounds.add(info.round)
            return RoundStep(info, left=exc.error or str(exc))

    def run_round(self, info: RoundInfo) -> RoundResult:
        t = self._t = info.round
        self._round_start_adapter = None
        timings: dict[str, float] = {}
        started = time.perf_counter()
        names = list(info.feature_names or self.config.features)
        features = learnability_features(
            self.slm,
            info.candidates,
            names,
            self.config.batch_size,
            local_questions=[s.question for s in self.data.train],
            progress=lambda task, done, total: self.progress(f"round {t} {task}", done, total),
        )
        features = self.privacy.privatize_features(features, names)
        offers = self._offers(info)
        timings["score"] = time.perf_counter() - started
        secagg = self._secagg_client(info)
        upload = FeatureUpload(
            round=t,
            feature_names=names,
            sample_ids=[c.sample_id for c in info.candidates],
            features=features.tolist(),
            offers=offers,
            secagg_keys=secagg.advertise() if secagg else None,
            adapter_size=int(self.trainer.adapter_vector().size) if secagg else 0,
        )
        self.transport.call("features.put", upload, t, Ack)
        log.info(
            "%s round %d: uploaded features for %d candidates, %d offers",
            self.config.name,
            t,
            len(info.candidates),
            len(offers),
        )

        started = time.perf_counter()
        allocation = self._wait_allocation(t)
        timings["wait_allocation"] = time.perf_counter() - started
        by_id = {c.sample_id: c for c in info.candidates}
        allocated = [by_id[s] for s in allocation.sample_ids if s in by_id]
        if secagg is not None and allocation.secagg_roster is None:
            secagg = None  # the group could not form this round
        if secagg is not None and allocation.secagg_roster is not None:
            shares = secagg.share_keys(allocation.secagg_roster)
            self.transport.call("secagg.put", SecAggUpload(round=t, step="shares", body=shares), t, Ack)

        started = time.perf_counter()
        outcome = _Outcome()
        training: dict[str, float | int | None] | None = None
        if self.config.can_train and (allocated or self._training_samples):
            # L_SFT on private data every round; teacher paths and L_CD on top when allocated.
            self._measure(outcome, allocated, "before")
            if allocated:
                outcome.sample_rewards = self._gradient_credit(allocated, outcome.heldout_pairs)
            done = self._train(allocated, t)
            training = {
                "steps": done.steps,
                "sft_loss": None if math.isnan(done.sft_loss) else done.sft_loss,
                "cd_loss": None if math.isnan(done.cd_loss) else done.cd_loss,
                "cd_pairs": done.n_pairs,
            }
            self._measure(outcome, allocated, "after")
        elif allocation.server_update is not None:  # score-only: the coordinator trained our adapter
            self._measure(outcome, allocated, "before")
            self._apply_server_update(allocation.server_update)
            self._measure(outcome, allocated, "after")
        timings["train"] = time.perf_counter() - started
        measured = outcome.measured
        reward = relative_drop(*measured) if measured is not None else 0.0
        if secagg is not None:
            self._send_masked_adapter(t, secagg)

        started = time.perf_counter()
        accuracy = self.evaluate()
        timings["evaluate"] = time.perf_counter() - started
        ppl_before, ppl_after = outcome.perplexities()
        report = RewardReport(
            round=t,
            reward=reward,
            ppl_before=ppl_before,
            ppl_after=ppl_after,
            n_allocated=len(allocated),
            test_accuracy=accuracy,
            bytes_sent=self.transport.bytes_sent,
            bytes_received=self.transport.bytes_received,
            dp_epsilon=self.privacy.accountant.epsilon,
            sample_rewards=outcome.sample_rewards,
        )
        self.transport.call("reward.put", report, t, Ack)
        if secagg is not None:
            started = time.perf_counter()
            self._finish_secagg(t, secagg)
            timings["secure_aggregation"] = time.perf_counter() - started
        self._done_rounds.add(t)
        log.info(
            "%s round %d: %d allocated (%s), %s %.3f -> %.3f, reward %.3f%s, test accuracy %.3f",
            self.config.name,
            t,
            len(allocated),
            allocation.reason,
            outcome.what,
            ppl_before,
            ppl_after,
            reward,
            "" if outcome.sample_rewards is None else f" (per sample {np.mean(outcome.sample_rewards):.3f} mean)",
            accuracy,
        )
        return RoundResult(
            t, len(allocated), reward, ppl_before, ppl_after, accuracy, timings, outcome.sample_rewards, training
        )

    # ------------------------------------------------------------------------------- reward
    @property
    def _heldout(self) -> list:
        """Private training samples kept out of training to measure the reward on the device's own
        task: the last ``reward.heldout_size`` of them, at most a quarter of the data."""
        rcfg = self.config.reward
        if not rcfg.uses_heldout:
            return []
        n = min(rcfg.heldout_size, len(self.data.train) // 4)
        return self.data.train[len(self.data.train) - n :] if n > 0 else []

    @property
    def _training_samples(self) -> list:
        """Private samples L_SFT trains on: all but the held-out ones, answer-only ones unless
        ``private_sft="with_rationale"``."""
        kept = self.data.train[: len(self.data.train) - len(self._heldout)]
        if self.config.private_sft == "with_rationale":
            kept = [s for s in kept if s.rationale]
        return kept

    def _measure(self, outcome: _Outcome, allocated: list[Candidate], when: str) -> None:
        """Record the reward's loss before or after the update (``RewardSettings.kind``), and keep the
        held-out pairs of the round's start for the gradient credit."""
        if not allocated:  # nothing was allocated: no filter learns from this round
            return
        rcfg, heldout = self.config.reward, self._heldout
        if heldout and (rcfg.kind == "heldout" or (when == "before" and rcfg.credit == "gradient")):
            if when == "after" or self._probe_memo is None:  # greedy: one scorer, one result
                self._probe_memo = HeldoutProbe(heldout, self.config.batch_size).measure(self.slm)
            pairs, nll = self._probe_memo
            if when == "before":
                outcome.heldout_pairs = pairs
        if rcfg.kind == "heldout" and heldout:
            outcome.what, value = "held-out answer NLL", nll
        else:
            outcome.what, value = "allocated-path PPL", self._ppl(allocated)
        setattr(outcome, when, value)

    def _gradient_credit(
        self, allocated: list[Candidate], heldout_pairs: list[tuple[str, str]] | None
    ) -> list[float] | None:
        """Per-sample rewards from gradient alignment with the held-out loss (torch backend only)."""
        rcfg = self.config.reward
        if rcfg.credit != "gradient" or not heldout_pairs:
            return None
        align = getattr(self.trainer, "gradient_alignment", None)
        if align is None:
            log.info(
                "%s: the %s backend gives no per-sample gradients; one reward for the round",
                self.config.name,
                self.config.train_backend,
            )
            return None
        teacher = [(format_prompt(c.question), format_target(c.path)) for c in allocated]
        cosines = align(teacher, heldout_pairs, self.config.distill.max_length, self.config.distill.micro_batch_size)
        return sample_rewards(cosines, rcfg.temperature)

    # ------------------------------------------------------------- co-tuning (secure FedAvg)
    def _secagg_client(self, info: RoundInfo) -> SecAggClient | None:
        """This device's part in its group's secure aggregation; the coordinator names the group
        (the operator assigns it with the enrollment token, see docs/protocol.md)."""
        group = info.secagg_group
        cfg = info.secagg_configs.get(group) if group else None
        if info.host_framework != "cotuning" or group is None or cfg is None or not self.config.can_train:
            return None
        assert self.transport.client_id is not None
        return SecAggClient(self.transport.client_id, secagg_round_id(info.round, group), cfg)

    def _poll_secagg(self, t: int, step: SecAggPoll) -> SecAggReply:
        deadline = time.monotonic() + self.config.max_wait_s
        while True:
            reply = self.transport.call("secagg.get", SecAggQuery(round=t, step=step), t, SecAggReply)
            if reply.status != "pending":
                return reply
            if time.monotonic() > deadline:
                raise CoordinatorError(f"round {t}: secure aggregation step {step!r} timed out")
            time.sleep(self.config.poll_interval_s)

    def _send_masked_adapter(self, t: int, secagg: SecAggClient) -> None:
        """Mask this device's adapter (DP-noised update if enabled) against its group's peers."""
        inbox = self._poll_secagg(t, "inbox")
        if inbox.status != "ready" or not isinstance(inbox.body, SecAggInbox):
            log.warning("%s round %d: no secure aggregation (%s)", self.config.name, t, _why(inbox))
            return
        start = self._round_start_adapter if self._round_start_adapter is not None else self.trainer.adapter_vector()
        update = self.privacy.privatize_update(self.trainer.adapter_vector() - start)
        masked = secagg.masked_input(start + update, inbox.body.shares)
        self.transport.call("secagg.put", SecAggUpload(round=t, step="masked", body=masked), t, Ack)

    def _finish_secagg(self, t: int, secagg: SecAggClient) -> None:
        """Answer the unmask request, then adopt the group's average adapter."""
        request = self._poll_secagg(t, "unmask")
        if request.status == "failed":
            log.warning("%s round %d: no group average (%s)", self.config.name, t, _why(request))
            return
        if request.status == "ready" and isinstance(request.body, UnmaskRequest):
            response = secagg.unmask(request.body.survivors, request.body.dropped)
            self.transport.call("secagg.put", SecAggUpload(round=t, step="unmask", body=response), t, Ack)
        result = self._poll_secagg(t, "result")
        if result.status != "ready" or not isinstance(result.body, SecAggResult):
            log.warning("%s round %d: no group average (%s)", self.config.name, t, _why(result, "not in group"))
            return
        self.trainer.load_adapter_vector(result.body.average.astype(np.float64))
        self.export_adapter()
        log.info(
            "%s round %d: adopted the average adapter of %d clients",
            self.config.name,
            t,
            len(result.body.contributors),
        )

    def _wait_allocation(self, t: int) -> Allocation:
        deadline = time.monotonic() + self.config.max_wait_s
        while True:
            allocation = self.transport.call("allocation.get", AllocationQuery(round=t), t, Allocation)
            if allocation.status == "ready":
                return allocation
            if time.monotonic() > deadline:
                raise CoordinatorError(f"round {t}: no allocation within {self.config.max_wait_s:.0f}s")
            time.sleep(self.config.poll_interval_s)

    def _offers(self, info: RoundInfo) -> list[PathOffer]:
        """Own paths on public questions this SLM answers correctly (LLM direction, step 6)."""
        questions = info.offer_questions[: self.config.max_offers]
        if not questions:
            return []
        paths = self.slm.generate(
            [format_prompt(q.question) for q in questions],
            batch_size=self.config.batch_size,
            progress=self._task("offers"),
        )
        return [
            PathOffer(sample_id=q.sample_id, path=p.strip())
            for q, p in zip(questions, paths)
            if is_correct(p, q.answer)
        ]

    def _ppl(self, candidates: list[Candidate]) -> float:
        lps = self.slm.completion_logprobs(
            [format_prompt(c.question) for c in candidates],
            [format_target(c.path) for c in candidates],
            self.config.batch_size,
        )
        return perplexity(lps)

    def _train(self, allocated: list[Candidate], t: int) -> TrainReport:
        """LoRA update, then re-export the merged SLM so next round's scores reflect it."""
        from lada_client.training.backend import PreferencePair

        cfg = self.config
        prompts = [format_prompt(c.question) for c in allocated]
        own = self.slm.generate(
            prompts,
            temperature=cfg.distill.rejected_temperature,
            seed=cfg.distill.seed + t,
            batch_size=cfg.batch_size,
            progress=self._task("train: own paths"),
        )
        pairs = [
            PreferencePair(p, format_target(c.path), format_target(o.strip()))
            for p, c, o in zip(prompts, allocated, own)
            if o.strip() and not (cfg.distill.drop_correct_rejected and is_correct(o, extract_answer(c.path) or ""))
        ]
        teacher = [(p, format_target(c.path)) for p, c in zip(prompts, allocated)]
        private = [(format_prompt(s.question), format_target(s.target)) for s in self._training_samples]
        self._round_start_adapter = self.trainer.adapter_vector()
        report = self.trainer.train_round(
            teacher, pairs, private, cfg.distill, progress=self._task("train: LoRA steps")
        )
        self.export_adapter()
        return report

    def _apply_server_update(self, factors: list[LoraFactor]) -> None:
        """Merge an adapter the coordinator trained for this score-only device into the base
        scoring model (numpy + onnx, no torch) and score with the result from now on."""
        from lada_client.models.weight_swap import apply_lora_factors

        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "special_tokens.json"):
            if (cfg.scoring_model.parent / name).exists() and not (cfg.state_dir / name).exists():
                shutil.copy(cfg.scoring_model.parent / name, cfg.state_dir / name)
        apply_lora_factors(cfg.scoring_model, cfg.state_dir / "model.onnx", factors)
        self._reload_slm(cfg.state_dir / "model.onnx")
        log.info("%s: applied the adapter the coordinator trained for it (%d projections)", cfg.name, len(factors))

    def _reload_slm(self, path: Path) -> None:
        """Score with the model at ``path`` from now on. The old session is released first: with
        both alive a client holds two copies of the weights and the old session's arena at once,
        its memory peak (Gemma-3-270M, 262k vocabulary: a 1.7 GB graph)."""
        del self.slm
        self._probe_memo = None
        gc.collect()
        self.slm = self.load_slm(path)

    def export_adapter(self) -> None:
        """Save the adapter and refresh the ONNX scorer so scoring reflects it.

        ``scorer_refresh="swap"`` writes the merged projection weights into the exported graph
        (no tracing; see ``models/weight_swap.py``); it falls back to a full re-export when the
        graph's weights cannot be matched. ``"export"`` always re-exports.
        """
        cfg = self.config
        self.trainer.save(self._adapter_dir)
        if cfg.scorer_refresh == "swap":
            from lada_client.models.weight_swap import WeightMapError, load_or_build_map, swap_weights

            try:
                mapping = load_or_build_map(
                    cfg.state_dir, cfg.scoring_model, self.trainer.projection_weights(merged=False)
                )
                for name in ("tokenizer.json", "special_tokens.json"):
                    if (cfg.scoring_model.parent / name).exists() and not (cfg.state_dir / name).exists():
                        shutil.copy(cfg.scoring_model.parent / name, cfg.state_dir / name)
                swap_weights(
                    cfg.scoring_model, cfg.state_dir / "model.onnx", mapping, self.trainer.projection_weights()
                )
                self._reload_slm(cfg.state_dir / "model.onnx")
                return
            except WeightMapError as exc:
                log.warning("weight swap not possible (%s); re-exporting the scoring model", exc)
        self._reexport()

    def _reexport(self) -> None:
        from lada_client.models.export import export_scoring_model, scoring_files

        cfg = self.config
        with tempfile.TemporaryDirectory(prefix="lada-merged-", dir=cfg.state_dir) as tmp:
            merged = self.trainer.merged_checkpoint(Path(tmp) / "merged")
            staged = export_scoring_model(merged, Path(tmp) / "onnx" / "model.onnx").parent
            for name in scoring_files(staged):  # model last: its presence means complete
                os.replace(staged / name, cfg.state_dir / name)
        self._reload_slm(cfg.state_dir / "model.onnx")

    def evaluate(self) -> float:
        """Exact-match accuracy of greedy answers on (a prefix of) the private test split."""
        test = self.data.test[: self.config.eval_size]
        if not test:
            return 0.0
        outputs = self.slm.generate(
            [format_prompt(s.question) for s in test],
            batch_size=self.config.batch_size,
            progress=self._task("evaluate"),
        )
        return float(np.mean([is_correct(o, s.answer) for o, s in zip(outputs, test)]))


def _why(reply: SecAggReply, otherwise: str | None = None) -> str:
    """What a secure-aggregation reply without the awaited body says, for the log."""
    if isinstance(reply.body, SecAggFailure):
        return reply.body.error
    return otherwise or reply.status
