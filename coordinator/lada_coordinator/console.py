"""What a person reads: the federation's progress and per-round tables, the operator CLI's tables.

Everything here renders data the rest of the coordinator produces (the operator status document
of ``/v1/status``, its round metrics, the token list) with ``rich``. On a terminal, set-up stages
and the current round's phase are live progress bars (a stage leaves one line when done, a round
its table); when stdout is a file or a pipe there is no live display and no colour, and tables
lose their rules, so a log of the same run is plain lines (``plain`` below). The client SDK never
imports this.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lada_client.common.logs import LOG_FORMAT, quiet_libraries
from lada_client.common.wire import ROUTES, Phase
from lada_coordinator.federation import FederationSettings, ProcessFailure

__all__ = [
    "ConsoleReporter",
    "clients_table",
    "failure_message",
    "human_bytes",
    "make_console",
    "round_table",
    "setup_console_logging",
    "status_view",
    "tokens_table",
]

#: Phases of the round engine (``RoundEngine.status.phase``) as the progress line names them.
PHASES = {
    "waiting": "waiting for devices",
    "preparing": "opening: candidates and teacher paths",
    "features": "features",
    "training": "training on the devices",
    "closing": "closing: rewards, LLM update, evaluation",
    "closed": "closed",
    "finished": "finished",
}


#: Width of the output when it is not a terminal: lines of a log are not wrapped at 80 columns.
PLAIN_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): a terminal's own width; a file's or pipe's, wide enough
    that no line of a log is broken in two."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH
    return console


def human_bytes(n: float | None) -> str:
    """``38.0 kB``: decimal units with one decimal, short enough for a table column."""
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    s = max(0.0, now - then)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.0f} d ago"


def _table(title: str | None, plain: bool, **kwargs: Any) -> Table:
    """Rules and a bold header on a terminal; bare aligned columns in a log (``plain``)."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold" if not plain else "",
        box=None if plain else box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="" if plain else "bold",
        caption_justify="left",
        **kwargs,
    )


def _seconds(m: dict[str, Any], now: float | None = None) -> float | None:
    """How long a round took (``closed_at - opened_at``), or has been running until ``now``."""
    opened, closed = m.get("opened_at"), m.get("closed_at")
    if opened is None:
        return None
    if closed is not None:
        return closed - opened
    return None if now is None else now - opened


def round_table(
    metrics: dict[str, Any],
    previous: dict[str, Any] | None = None,
    total_rounds: int | None = None,
    plain: bool = False,
) -> Group:
    """One closed round, one row per party: test accuracy (and its change since ``previous``),
    what was allocated to it, its reward, and the bytes it sent and received in this round.

    ``metrics`` is a round of ``/v1/status``'s ``rounds`` (clients' ``test_accuracy``, ``reward``,
    ``n_allocated``, cumulative ``bytes_client_*``; ``llm`` with ``accuracy`` and ``n_trained``;
    ``quarantined``); the LLM's row appears when it was evaluated or trained."""
    seconds = _seconds(metrics)
    of = f"/{total_rounds}" if total_rounds else ""
    title = f"round {metrics['round']}{of}" + (f" · {seconds:.0f} s" if seconds is not None else "")
    aside = metrics.get("quarantined") or {}
    if aside:
        title += f" · {len(aside)} set aside"
    table = _table(None, plain)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("party", "left"),
        ("accuracy", "right"),
        ("change", "right"),
        ("allocated", "right"),
        ("reward", "right"),
        ("sent", "right"),
        ("received", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    before = (previous or {}).get("clients", {})
    for name, c in sorted(metrics.get("clients", {}).items()):
        prev = before.get(name)
        change = "" if prev is None else f"{c['test_accuracy'] - prev['test_accuracy']:+.3f}"
        sent = c["bytes_client_sent"] - (prev["bytes_client_sent"] if prev else 0)
        received = c["bytes_client_received"] - (prev["bytes_client_received"] if prev else 0)
        table.add_row(
            name,
            f"{c['test_accuracy']:.3f}",
            change,
            str(c["n_allocated"]),
            f"{c['reward']:.3f}",
            human_bytes(sent),
            human_bytes(received),
        )
    llm = metrics.get("llm") or {}
    if llm.get("accuracy") is not None or llm.get("n_trained"):
        acc = llm.get("accuracy")
        prev_acc = ((previous or {}).get("llm") or {}).get("accuracy")
        change = "" if acc is None or prev_acc is None else f"{acc - prev_acc:+.3f}"
        reward = llm.get("reward")
        table.add_row(
            "LLM",
            "" if acc is None else f"{acc:.3f}",
            change,
            f"{llm.get('n_trained', 0)} paths",
            "" if reward is None else f"{reward:.3f}",
            "",
            "",
        )
    notes = [f"{name} set aside: {why}" for name, why in sorted(aside.items())]
    if llm.get("error"):
        notes.append(f"LLM update failed: {llm['error']}")
    dim = "" if plain else "dim"
    return Group(Text(title, style="" if plain else "bold"), table, *(Text(n, style=dim) for n in notes))


def clients_table(status: dict[str, Any], plain: bool = False) -> Table:
    """The enrolled devices of a status document: who, which model, when last seen (by the
    coordinator's clock), and whether it is set aside this round or revoked."""
    now = status.get("now") or time.time()
    table = _table(None, plain)
    for name in ("name", "client id", "model", "group", "last seen", "state", "sent", "received"):
        table.add_column(
            name,
            justify="right" if name in ("sent", "received") else "left",
            no_wrap=name != "state",
            min_width=7 if name == "state" else None,
        )
    for d in status["devices"]:
        if d.get("revoked"):
            state = "revoked"
        elif d.get("quarantined"):
            state = f"set aside in round {status['round']}: {d['quarantined']}"
        else:
            state = "active"
        table.add_row(
            d["name"],
            d["client_id"],
            d.get("model_name", ""),
            d.get("secagg_group", ""),
            _ago(d.get("last_seen"), now),
            state,
            human_bytes(d.get("bytes_in")),
            human_bytes(d.get("bytes_out")),
        )
    return table


def _round_line(status: dict[str, Any]) -> str:
    """``round 2/3 · training on the devices · rewards 1/3``: where the engine is now."""
    engine = status.get("engine", {})
    t = status["round"]
    total = status.get("total_rounds")
    phase = status.get("phase", "waiting")
    if engine.get("phase") and engine.get("round", 0) >= max(t, 1):
        # the engine's phase is the finer one (opening, closing), and it names a round being opened
        t, phase = engine["round"], engine["phase"]
    if t == 0:
        return f"waiting for devices ({status.get('clients', 0)} enrolled)"
    arrived = status.get("arrived") or {}
    line = f"round {t}{f'/{total}' if total else ''} · {PHASES.get(phase, phase)}"
    if phase == Phase.FEATURES and arrived.get("expected"):
        line += f" · {arrived['features']}/{arrived['expected']} uploaded"
    elif phase == Phase.TRAINING and arrived.get("expected"):
        line += f" · {arrived['rewards']}/{arrived['expected']} rewards in"
    return line


def status_view(status: dict[str, Any], plain: bool = False) -> Group:
    """``lada-coordinator status``: the current round and phase, every round so far, the devices,
    and the engine's recent errors."""
    engine = status.get("engine", {})
    head = Text(_round_line(status), style="" if plain else "bold")
    head.append(f" · engine: {'error' if engine.get('error') else 'ok'}")
    leadership = status.get("leadership") or {}
    if leadership.get("database") == "postgresql":  # replicas: which one answered, which one runs rounds
        head.append(f" · replica {leadership['replica']}, rounds run on {leadership.get('leader_replica') or '?'}")
    parts: list[RenderableType] = [head]
    rounds = _table(None, plain)
    for name in (
        "round",
        "phase",
        "seconds",
        "clients",
        "SLM accuracy (mean)",
        "LLM accuracy",
        "allocated",
        "set aside",
    ):
        rounds.add_column(name, justify="left" if name in ("round", "phase") else "right", no_wrap=True)
    for m in status.get("rounds", []):
        clients = m.get("clients") or {}
        accs = [c["test_accuracy"] for c in clients.values()]
        seconds = _seconds(m, status.get("now"))
        llm_acc = (m.get("llm") or {}).get("accuracy")
        rounds.add_row(
            str(m["round"]),
            m["phase"],
            "" if seconds is None else f"{seconds:.0f}",
            str(len(clients)) if clients else "",
            f"{sum(accs) / len(accs):.3f}" if accs else "",
            "" if llm_acc is None else f"{llm_acc:.3f}",
            str(sum(c["n_allocated"] for c in clients.values())) if clients else "",
            str(len(m.get("quarantined") or {})) if clients else "",
        )
    if status.get("rounds"):
        parts.append(rounds)
    parts.append(Text(f"{len(status['devices'])} enrolled device(s)", style="" if plain else "bold"))
    parts.append(clients_table(status, plain))
    errors = engine.get("errors") or []
    for e in errors[-3:]:
        parts.append(
            Text(f"engine error in round {e['round']} ({e['phase']}): {e['error']}", style="" if plain else "red")
        )
    return Group(*parts)


def tokens_table(tokens: list[dict[str, Any]], plain: bool = False) -> Table:
    """``lada-coordinator tokens``: each enrollment token's id, group and state."""
    table = _table(None, plain)
    for name in ("token id", "group", "state"):
        table.add_column(name, no_wrap=True)
    for t in tokens:
        table.add_row(t["token_id"], t["group"], t["state"])
    return table


def failure_message(failure: ProcessFailure, plain: bool = False) -> Group:
    """The one message a failed federation ends with: which process, what happened, the end of
    its log (verbatim: no markup is read from it) and where the whole log is."""
    lines: list[RenderableType] = [Text(f"✗ {failure.name} {failure.detail}", style="" if plain else "bold red")]
    if failure.tail:
        n = len(failure.tail)
        lines.append(Text(f"  last {'line' if n == 1 else f'{n} lines'} of {failure.log or 'its output'}:"))
        lines.extend(Text(f"    {line}", style="" if plain else "dim") for line in failure.tail)
    elif failure.log is not None:
        lines.append(Text(f"  its log {failure.log} is empty"))
    return Group(*lines)


def setup_console_logging(console: Console, verbose: bool, log_file: Path | None = None) -> None:
    """The federation command's logging: everything (INFO, DEBUG with ``verbose``) to ``log_file``;
    on the console only warnings and errors unless ``verbose``, drawn above the progress bars."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    shown = RichHandler(console=console, show_path=False, show_time=verbose, markup=False, rich_tracebacks=False)
    shown.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.addHandler(shown)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        kept = logging.FileHandler(log_file, mode="w")
        kept.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(kept)
    logging.captureWarnings(True)  # what is left of third-party warnings: logged, once, not printed raw
    quiet_libraries(verbose)
    if not verbose:
        shown.addFilter(_library_chatter)
        # tqdm bars of libraries (GGUF de-quantisation in transformers) would tear the stage lines;
        # the stages show progress themselves. The variable reaches the child processes too.
        os.environ.setdefault("TQDM_DISABLE", "1")
    _route_transformers_logs()


def _library_chatter(record: logging.LogRecord) -> bool:
    """Console filter: library warnings that are known noise (transformers' notes on tokenizer
    defaults and the like) stay in the log file; the console shows the libraries' errors only."""
    return record.levelno >= logging.ERROR or not record.name.startswith(("transformers", "optimum", "torch"))


def _route_transformers_logs() -> None:
    """transformers writes to stderr through a handler of its own, past ours: send its records to
    the root logger instead (file and console handlers decide what is kept and shown)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


class _ConsoleStage:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task
        self.notes: list[str] = []

    def advance(self, done: int) -> None:
        self._progress.update(self._task, completed=done)

    def note(self, text: str) -> None:
        self.notes.append(text)


class ConsoleReporter:
    """A federation run drawn for a person (a :class:`~lada_coordinator.federation.Reporter`).

    Use as a context manager around :func:`~lada_coordinator.federation.run_federation`: it owns
    the live display. Each set-up stage is a bar while it runs and one ``✓`` line when done; then
    one bar for the rounds whose text is the current phase; each closed round prints its
    :func:`round_table`; a failure prints :func:`failure_message` on ``err_console``."""

    def __init__(self, console: Console, err_console: Console | None = None) -> None:
        self.console = console
        self.err_console = err_console or console
        self.plain = not console.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            refresh_per_second=4,
        )
        self._rounds: TaskID | None = None
        self._closed = 0
        ok = (console.encoding or "").lower().startswith("utf")
        self._ok, self._bad = ("✓", "✗") if ok else ("ok", "x")

    def __enter__(self) -> ConsoleReporter:
        if not self.plain:  # a file gets no live display at all (rich would end it with a blank line)
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress.live.is_started:
            self._progress.stop()

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[_ConsoleStage]:
        task = self._progress.add_task(name, total=total)
        started = time.perf_counter()
        stage = _ConsoleStage(self._progress, task)
        try:
            yield stage
        except BaseException:
            self._progress.remove_task(task)
            self.console.print(Text(f"{self._bad} {name:<26}", style="" if self.plain else "red"))
            raise
        self._progress.remove_task(task)
        line = Text(f"{self._ok} ", style="" if self.plain else "green")
        line.append(f"{name:<26}{time.perf_counter() - started:6.1f} s  ")
        line.append("; ".join(stage.notes), style="" if self.plain else "dim")
        self.console.print(line, soft_wrap=True)

    def started(self, url: str, settings: FederationSettings, logs: Path) -> None:
        rounds = f"{settings.rounds} round{'s' if settings.rounds != 1 else ''}"
        self.console.print(
            f"federation: coordinator + {settings.clients} clients on {url} · {rounds} · "
            f"allocation {settings.allocation} · logs in {logs} · dashboard {url}{ROUTES['dashboard']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        self._rounds = self._progress.add_task("waiting for devices", total=settings.rounds)

    def status(self, status: dict[str, Any], settings: FederationSettings) -> None:
        if self._rounds is not None:
            self._progress.update(self._rounds, description=_round_line(status), completed=self._closed)

    def round_closed(
        self, metrics: dict[str, Any], previous: dict[str, Any] | None, settings: FederationSettings
    ) -> None:
        self._closed += 1
        if self._rounds is not None:
            self._progress.update(self._rounds, completed=self._closed)
        self.console.print(round_table(metrics, previous, settings.rounds, self.plain))

    def engine_error(self, error: dict[str, Any]) -> None:
        self.console.print(
            Text(
                f"! coordinator, round {error['round']} ({error['phase']}): {error['error']} (retrying)",
                style="" if self.plain else "yellow",
            ),
        )

    def failed(self, failure: ProcessFailure) -> None:
        self._stop()  # the message comes last and whole, not under a live bar
        self.err_console.print(failure_message(failure, not self.err_console.is_terminal), soft_wrap=True)

    def finished(self, seconds: float, metrics_path: Path, report_path: Path) -> None:
        if self._rounds is not None:
            self._progress.remove_task(self._rounds)
            self._rounds = None
        self.console.print(
            Text(
                f"{self._ok} done in {seconds:.0f} s; report {report_path} (metrics in {metrics_path})",
                style="" if self.plain else "green",
            ),
            soft_wrap=True,
        )
