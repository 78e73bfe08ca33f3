"""Progress of a device's long steps (scoring, generating, training, evaluating), for a person.

A round on a device is minutes of work in a few long loops; without progress a user cannot tell a
slow phone from a stuck one. The loops report ``(task, done, total)`` to a :data:`ProgressFn`; what
becomes of it is the embedder's choice: :class:`LogProgress` (the default: a log line at the start,
each quarter and the end), :class:`TerminalProgress` (one live line on a terminal, what
``lada-client run`` uses there), or an embedding app's own callback (``LadaClient(config,
progress=...)``). Plain Python, no terminal library: the SDK stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["LogProgress", "ProgressFn", "TerminalProgress", "bind", "no_progress"]

#: ``progress(task, done, total)``; called with ``done == 0`` when a task starts and ``done == total`` at its end
ProgressFn = Callable[[str, int, int], None]


def no_progress(task: str, done: int, total: int) -> None:
    """Report nothing."""


def bind(progress: ProgressFn | None, task: str) -> Callable[[int, int], None] | None:
    """The ``(done, total)`` callback a loop takes, for one named task (``None`` stays ``None``)."""
    if progress is None:
        return None
    return lambda done, total: progress(task, done, total)


class LogProgress:
    """A log line when a task starts, at each quarter of it, and when it ends (with its seconds)."""

    def __init__(self, logger: logging.Logger, prefix: str = "") -> None:
        self._log, self._prefix = logger, prefix
        self._started: dict[str, float] = {}
        self._quarter: dict[str, int] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        if done <= 0 or task not in self._started:
            self._started[task], self._quarter[task] = time.perf_counter(), 0
            self._log.info("%s%s: 0/%d", self._prefix, task, total)
            if done <= 0:
                return
        if done >= total:
            seconds = time.perf_counter() - self._started.pop(task)
            self._quarter.pop(task, None)
            self._log.info("%s%s: %d/%d done in %.1fs", self._prefix, task, done, total, seconds)
            return
        quarter = 4 * done // max(1, total)
        if quarter > self._quarter[task]:
            self._quarter[task] = quarter
            self._log.info("%s%s: %d/%d", self._prefix, task, done, total)


class TerminalProgress:
    """One line per task on a terminal, redrawn in place (``\\r``): ``scoring ████░░░░ 32/64 12s``;
    the finished line stays. For a stream that is not a terminal, use :class:`LogProgress`."""

    WIDTH = 24

    def __init__(self, stream: TextIO, prefix: str = "") -> None:
        self._stream, self._prefix = stream, prefix
        self._started: dict[str, float] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        started = self._started.setdefault(task, time.perf_counter())
        filled = self.WIDTH * min(done, total) // max(1, total)
        bar = "█" * filled + "░" * (self.WIDTH - filled)
        line = f"{self._prefix}{task:<22} {bar} {done}/{total} {time.perf_counter() - started:.0f}s"
        end = "\n" if done >= total else ""
        self._stream.write(f"\r{line}\x1b[K{end}")
        self._stream.flush()
        if done >= total:
            del self._started[task]
