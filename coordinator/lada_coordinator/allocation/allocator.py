"""Where allocation is decided: which candidates go to which learner, in both directions.

One :class:`~lada_coordinator.allocation.eenet.LearnabilityFilter` per (client, direction),
persisted in SQLite after every change so a restarted coordinator keeps what it learned (inside
:meth:`Allocator.saving_together`, the filters of a round close are refit together, in one batched
call, and written in one commit).
``mode`` switches LaDa off for the baselines: ``random`` allocates the same budget uniformly at
random; ``all`` allocates every candidate; ``none`` allocates nothing (local-only).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from lada_coordinator.allocation.batched import refit_many, select_many
from lada_coordinator.allocation.eenet import FilterConfig, LearnabilityFilter
from lada_coordinator.stores import CoordinatorStore

log = logging.getLogger(__name__)


@contextmanager
def _one_thread() -> Iterator[None]:
    """The filters are tiny MLPs: torch's thread pool costs more than it saves (3–26× measured in
    ``benchmarks/bench_allocation.py``), but the LLM in the same process wants every core."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


SLM = "slm"  # coordinator → client: teacher paths the SLM should learn
LLM = "llm"  # client → coordinator: SLM paths the LLM should learn

#: (selected sample ids, reason), as :meth:`Allocator.allocate` returns it
Allocation = tuple[list[str], str]


class Allocator:
    def __init__(
        self,
        store: CoordinatorStore,
        mode: str,
        configs: dict[str, FilterConfig],
        seed: int,
        *,
        batched_refit: bool = True,
    ) -> None:
        self._store = store
        # inside saving_together(): refit all the block's filters at its end in one batched call
        # (False: each reward refits its filter at once, as outside the block; the writes still
        # wait for the block's end)
        self.batched_refit = batched_refit
        self._mode = mode
        self._configs = configs
        self._seed = seed
        self._filters: dict[tuple[str, str], LearnabilityFilter] = {}
        # filters rewarded but not yet written, while saving_together() is open:
        # (client, direction) -> the rounds whose reward it holds (each is marked as counted)
        self._unsaved: dict[tuple[str, str], set[int]] | None = None
        self._to_refit: set[tuple[str, str]] = set()  # of those, observed but not refit yet
        # what the last saving_together() block's batched refit returned, per (client, direction)
        self.last_refits: dict[tuple[str, str], dict[str, float]] = {}

    @contextmanager
    def saving_together(self) -> Iterator[None]:
        """Refit every filter rewarded in the block at its end, all in one batched call
        (:func:`~lada_coordinator.allocation.batched.refit_many`), then write them in one
        transaction: closing a round costs one commit, and a fraction of the refit time, instead of
        one of each per client. The refits run outside any transaction, so devices' requests are
        not held up by them; their losses are in :attr:`last_refits` afterwards. If the block, the
        refit or the write fails, the filters rewarded in it are dropped from memory and reload from
        the store, so no reward is counted twice when the round is closed again. An allocation
        inside the block sees a rewarded filter as it was before its refit."""
        if self._unsaved is not None:  # nested: the outer block refits and writes
            yield
            return
        self._unsaved = {}
        self.last_refits = {}
        try:
            yield
            keys = [key for key in self._unsaved if key in self._to_refit]
            if keys:
                with _one_thread():
                    results = refit_many([self._filters[key] for key in keys])
                self.last_refits = dict(zip(keys, results))
            with self._store.transaction():
                for (client_id, direction), rounds in self._unsaved.items():
                    state = self._filters[(client_id, direction)].to_bytes()
                    for round_index in sorted(rounds):
                        self._store.save_filter(client_id, direction, state, round_index)
        except BaseException:
            for key in self._unsaved:
                self._filters.pop(key, None)
            raise
        finally:
            self._unsaved = None
            self._to_refit = set()

    def _filter(self, client_id: str, direction: str, n_features: int) -> LearnabilityFilter:
        key = (client_id, direction)
        if key not in self._filters:
            saved = self._store.load_filter(client_id, direction)
            if saved is not None:
                self._filters[key] = LearnabilityFilter.from_bytes(saved)
            else:
                self._filters[key] = LearnabilityFilter(n_features, self._configs[direction])
        return self._filters[key]

    def allocate(
        self, round_index: int, direction: str, client_id: str, sample_ids: Sequence[str], z: np.ndarray
    ) -> tuple[list[str], str]:
        """Return (selected sample ids, reason)."""
        budget = self._configs[direction].budget
        if not sample_ids:
            return [], "empty"
        if self._mode == "all":
            return list(sample_ids), "all"
        if self._mode == "none":
            return [], "local_only"
        if self._mode == "random":
            # Seeded by the enrolled name, not the id: ids carry a random suffix per enrollment, and
            # the same seed must draw the same samples in every run, as the other modes do.
            record = self._store.client(client_id)
            name = record.name if record is not None else client_id
            rng = np.random.default_rng([self._seed, round_index, zlib.crc32(f"{name}/{direction}".encode())])
            idx = rng.choice(len(sample_ids), size=min(budget, len(sample_ids)), replace=False)
            return [sample_ids[i] for i in sorted(idx)], "random"
        with _one_thread():
            selection = self._filter(client_id, direction, z.shape[1]).select(z, sample_ids, round_index)
        return selection.sample_ids, selection.reason

    def allocate_many(
        self, round_index: int, direction: str, requests: Mapping[str, tuple[Sequence[str], np.ndarray]]
    ) -> dict[str, Allocation | Exception]:
        """:meth:`allocate` for many clients at once: client id → (sample ids, z) in, client id →
        its allocation, or the exception its own :meth:`allocate` would have raised, out (a bad
        upload or a corrupt stored filter fails that client only; the caller decides what to do
        with it).

        In ``lada`` mode the filters are decided together
        (:func:`~lada_coordinator.allocation.batched.select_many`): round 1's k-means for all
        clients in stacked arrays, and the scoring of filters with history in batched products,
        so a round of many clients costs a fraction of one :meth:`allocate` per client; each
        client's selection is the one :meth:`allocate` makes (k-means: the same indices; scores:
        equal up to float32 rounding). The other modes allocate client by client.
        """
        results: dict[str, Allocation | Exception] = {}
        if self._mode != "lada":
            for client_id, (sample_ids, z) in requests.items():
                try:
                    results[client_id] = self.allocate(round_index, direction, client_id, sample_ids, z)
                except Exception as exc:  # noqa: BLE001 - that client's failure, returned to the caller
                    results[client_id] = exc
            return results
        batch: list[tuple[str, LearnabilityFilter, np.ndarray, Sequence[str]]] = []
        for client_id, (sample_ids, z) in requests.items():
            if not sample_ids:
                results[client_id] = ([], "empty")
                continue
            try:
                batch.append((client_id, self._filter(client_id, direction, z.shape[1]), z, sample_ids))
            except Exception as exc:  # noqa: BLE001 - e.g. a stored filter that does not load
                results[client_id] = exc
        with _one_thread():
            selections = select_many([(flt, z, ids) for _, flt, z, ids in batch], round_index)
        for (client_id, _, _, _), selection in zip(batch, selections):
            results[client_id] = (
                selection if isinstance(selection, Exception) else (selection.sample_ids, selection.reason)
            )
        return {client_id: results[client_id] for client_id in requests}  # in the requests' order

    def reward(
        self, round_index: int, direction: str, client_id: str, z_selected: np.ndarray, reward: float | np.ndarray
    ) -> dict[str, float]:
        """Feed the round's reward to the filter — one common scalar, or one per selected row —
        refit it, persist it; once per round, so a round resumed after a crash does not count a
        reward twice.

        Returns the refit's ``{"exploit_loss", "explore_loss", "n_samples"}``, or ``{}`` when
        nothing was learned (a baseline mode, an empty allocation, a reward already counted).
        Inside :meth:`saving_together` (with ``batched_refit``, the default) the reward is only
        observed here and the filter is refit at the block's end with the others, so the return
        value is ``{"n_samples": ...}`` (the replay buffer's size after the observation); the
        losses are in :attr:`last_refits` after the block. The round engine's callers
        (``rounds.py``) do not use the returned losses."""
        if self._mode != "lada" or z_selected.shape[0] == 0:
            return {}
        if self._store.filter_updated(round_index, client_id, direction):
            return {}
        key = (client_id, direction)
        if self._unsaved is not None and round_index in self._unsaved.get(key, ()):
            return {}  # already rewarded in this round, not written yet
        flt = self._filter(client_id, direction, z_selected.shape[1])
        if self._unsaved is not None and key in self._to_refit:
            with _one_thread():  # an earlier round's reward in the same block: its refit first
                flt.refit()
            self._to_refit.discard(key)
        flt.observe(z_selected, reward)
        if self._unsaved is not None and self.batched_refit:
            self._unsaved.setdefault(key, set()).add(round_index)
            self._to_refit.add(key)
            return {"n_samples": float(flt.replay_size)}
        with _one_thread():
            losses = flt.refit()
        if self._unsaved is not None:
            self._unsaved.setdefault(key, set()).add(round_index)
        else:
            self._store.save_filter(client_id, direction, flt.to_bytes(), round_index)
        return losses
