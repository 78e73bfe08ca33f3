"""Request sequence numbers that keep increasing across restarts without trusting the clock.

The coordinator refuses any request whose ``seq`` is not above the last one it accepted from the
device (replay protection). Numbers drawn from the clock break when the clock moves back (NTP
step, a dead RTC battery), locking the device out for good. Instead the device counts, and writes
to disk only the upper end of a *block* of numbers it has reserved: after a crash it starts above
the block, skipping what it never used, so a number is never issued twice and disk is touched once
per ``block`` requests. Should the file be lost (device reset, restored backup), the coordinator's
``replay`` answer to an authenticated request carries the last accepted number and the transport
moves past it (:meth:`SequenceCounter.advance_past`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["SequenceCounter"]


class SequenceCounter:
    def __init__(self, path: Path | None = None, block: int = 1024) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self._path = path
        self._block = block
        self._lock = threading.Lock()
        self._next = self._load() + 1
        self._reserved = self._next - 1

    def _load(self) -> int:
        if self._path is None or not self._path.exists():
            return 0
        try:
            return max(0, int(self._path.read_text().strip() or 0))
        except ValueError as exc:
            raise ValueError(
                f"sequence file {self._path} is damaged; remove it (the coordinator resynchronises)"
            ) from exc

    def _reserve(self, upto: int) -> None:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            staged = self._path.with_name(self._path.name + ".tmp")
            with open(staged, "w") as fh:
                fh.write(str(upto))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staged, self._path)
        self._reserved = upto

    def next(self) -> int:
        """The next number; reserves (and persists) a new block when the current one is used up."""
        with self._lock:
            if self._next > self._reserved:
                self._reserve(self._next + self._block - 1)
            value = self._next
            self._next += 1
            return value

    def advance_past(self, last_accepted: int) -> None:
        """Continue above what the coordinator last accepted (after it answered ``replay``)."""
        with self._lock:
            if last_accepted >= self._next:
                self._next = last_accepted + 1
