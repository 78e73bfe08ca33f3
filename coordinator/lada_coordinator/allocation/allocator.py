"""Where allocation is decided: which candidates go to which learner, in both directions.

One :class:`~lada_coordinator.allocation.eenet.LearnabilityFilter` per (client, direction),
persisted in SQLite after every change so a restarted coordinator keeps what it learned (inside
:meth:`Allocator.saving_together`, all the changes of a round close in one commit).
``mode`` switches LaDa off for the baselines: ``random`` allocates the same budget uniformly at
random; ``all`` allocates every candidate; ``none`` allocates nothing (local-only).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from lada_coordinator.allocation.eenet import FilterConfig, LearnabilityFilter
from lada_coordinator.store import Store

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


class Allocator:
    def __init__(self, store: Store, mode: str, configs: dict[str, FilterConfig], seed: int) -> None:
        self._store = store
        self._mode = mode
        self._configs = configs
        self._seed = seed
        self._filters: dict[tuple[str, str], LearnabilityFilter] = {}
        # refit filters not yet written, while saving_together() is open: (client, direction) -> round
        self._unsaved: dict[tuple[str, str], int] | None = None

    @contextmanager
    def saving_together(self) -> Iterator[None]:
        """Write every filter refit in the block at its end, in one transaction: closing a round
        costs one commit instead of one per client. The refits themselves run outside any
        transaction, so devices' requests are not held up by them. If the block or the write
        fails, the filters refit in it are dropped from memory and reload from the store, so no
        reward is counted twice when the round is closed again."""
        if self._unsaved is not None:  # nested: the outer block writes
            yield
            return
        self._unsaved = {}
        try:
            yield
            with self._store.transaction():
                for (client_id, direction), round_index in self._unsaved.items():
                    state = self._filters[(client_id, direction)].to_bytes()
                    self._store.save_filter(client_id, direction, state, round_index)
        except BaseException:
            for key in self._unsaved:
                self._filters.pop(key, None)
            raise
        finally:
            self._unsaved = None

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

    def reward(
        self, round_index: int, direction: str, client_id: str, z_selected: np.ndarray, reward: float | np.ndarray
    ) -> dict[str, float]:
        """Feed the round's reward to the filter — one common scalar, or one per selected row —
        refit it, persist it; once per round, so a round resumed after a crash does not count a
        reward twice."""
        if self._mode != "lada" or z_selected.shape[0] == 0:
            return {}
        if self._store.filter_updated(round_index, client_id, direction):
            return {}
        if self._unsaved is not None and self._unsaved.get((client_id, direction)) == round_index:
            return {}  # refit already in this round, not written yet
        flt = self._filter(client_id, direction, z_selected.shape[1])
        flt.observe(z_selected, reward)
        with _one_thread():
            losses = flt.refit()
        if self._unsaved is not None:
            self._unsaved[(client_id, direction)] = round_index
        else:
            self._store.save_filter(client_id, direction, flt.to_bytes(), round_index)
        return losses
