"""What ``lada-coordinator federation`` prints when stdout is not a terminal: plain lines (no colour,
no live display, no wrapped rows), on round metrics the real round engine wrote (real SQLite, the
real tiny LLM evaluated), read back as ``/v1/status`` serves them."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from lada_client.common.wire import Candidate, Capabilities, FeatureUpload, RewardReport, RoundInfo
from lada_coordinator.allocation.allocator import SLM
from lada_coordinator.allocation.filter_config import FilterConfig
from lada_coordinator.config import CoordinatorConfig
from lada_coordinator.console import ConsoleReporter, clients_table, round_table, status_view
from lada_coordinator.federation import FederationSettings
from lada_coordinator.server.run import build
from lada_coordinator.store import ClientRecord

NAMES = ["slm_path_nll"]
CLIENTS = ("alpha", "beta", "gamma")


def _file_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160), out


def _features(t: int, info: RoundInfo, value: float) -> str:
    return FeatureUpload.model_construct(  # unvalidated, as a hostile device's bytes would arrive
        round=t,
        feature_names=NAMES,
        sample_ids=[c.sample_id for c in info.candidates],
        features=[[value + i] for i in range(len(info.candidates))],
        offers=[],
        secagg_keys=None,
        adapter_size=0,
    ).model_dump_json()


@pytest.fixture(scope="module")
def closed_rounds(tmp_path_factory, tiny_world) -> list[dict]:
    """Two rounds closed by the real engine: three devices, traffic counted by the store, gamma's
    round-2 features out of range (it is set aside), the LLM evaluated on the clients' test splits."""
    tmp = tmp_path_factory.mktemp("rounds")
    config = CoordinatorConfig(
        db_path=tmp / "c.sqlite",
        state_dir=tmp / "state",
        llm_dir=tiny_world["llm"],
        public_data=tiny_world["data"],
        rounds=2,
        min_clients=3,
        feature_names=tuple(NAMES),
        offer_questions=0,
        phase_timeout_s=30,
        slm_filter=FilterConfig(budget=2),
    )
    _, engine, store = build(config, tiny_world["data"])
    try:
        for name in CLIENTS:
            store.add_client(
                ClientRecord(f"{name}-1", name, f"s{name}", f"k{name}", "add", "m", Capabilities(), 0, 0, 0)
            )
        seq = 0
        for t in (1, 2):
            info = RoundInfo(
                round=t,
                phase="features",
                total_rounds=2,
                feature_names=NAMES,
                candidates=[
                    Candidate(
                        sample_id=f"p{t}{i}",
                        question=f"{i} + {t}?",
                        path=f"{i} + {t} = {i + t}. The answer is {i + t}.",
                        llm_logprob=-3.0,
                        llm_tokens=9,
                    )
                    for i in range(4)
                ],
            )
            store.open_round(t, info)
            for name in CLIENTS:
                seq += 1
                with store.transaction() as db:
                    store.put_upload(
                        db,
                        t,
                        f"{name}-1",
                        "features.put",
                        _features(t, info, 1e39 if (name, t) == ("gamma", 2) else 1.0),
                    )
                    store.accept(db, f"{name}-1", seq, 1000, 2500)  # what this device sent and received in the round
            engine._allocate(t)
            for i, name in enumerate(CLIENTS):
                found = store.allocation(t, f"{name}-1", SLM)
                if found is None:
                    continue
                report = RewardReport(
                    round=t,
                    reward=0.3,
                    ppl_before=2.0,
                    ppl_after=1.4,
                    n_allocated=len(found[0]),
                    test_accuracy=0.25 * t + i / 8,
                    bytes_sent=1,
                    bytes_received=1,
                )
                with store.transaction() as db:
                    store.put_upload(db, t, f"{name}-1", "reward.put", report.model_dump_json())
            engine._close(t, final=t == 2)
        return [m.to_dict() for m in store.round_metrics()]  # as /v1/status shows them
    finally:
        store.close()


def test_round_table_in_a_log_is_one_plain_line_per_party(closed_rounds):
    first, second = closed_rounds
    console, out = _file_console()
    assert not console.is_terminal
    console.print(round_table(first, None, 2, plain=True))
    console.print(round_table(second, first, 2, plain=True))
    text = out.getvalue()
    assert "\x1b[" not in text and "─" not in text  # no colour, no rules
    lines = [line.rstrip() for line in text.splitlines()]
    # round 1: title, header, three devices, the LLM; round 2: the same less gamma, plus why it is missing
    assert len(lines) == 6 + 6, text
    assert re.fullmatch(r"round 1/2 · \d+ s", lines[0]) and re.fullmatch(r"round 2/2 · \d+ s · 1 set aside", lines[6])
    assert (
        lines[1].split()
        == lines[7].split()
        == ["party", "accuracy", "change", "allocated", "reward", "sent", "received"]
    )
    alpha1, alpha2 = lines[2].split(), lines[8].split()
    assert alpha1[:2] == ["alpha", "0.250"] and alpha1[3:] == ["0.300", "1.0", "kB", "2.5", "kB"]
    assert alpha2[:3] == ["alpha", "0.500", "+0.250"] and alpha2[-4:] == [
        "1.0",
        "kB",
        "2.5",
        "kB",
    ]  # this round's bytes
    assert int(alpha1[2]) == first["clients"]["alpha"]["n_allocated"] >= 1
    assert [line.split()[0] for line in lines[2:6]] == ["alpha", "beta", "gamma", "LLM"]
    llm = lines[10].split()
    assert llm[0] == "LLM" and llm[1] == f"{second['llm']['accuracy']:.3f}" and "0 paths" in lines[10]
    assert [line.split()[0] for line in lines[8:11]] == ["alpha", "beta", "LLM"]
    assert lines[11].startswith("gamma set aside: ") and "1e+06" in lines[11]


def test_status_and_device_tables_in_a_log(closed_rounds):
    status = {
        "now": closed_rounds[-1]["closed_at"] + 5,
        "round": 2,
        "phase": "finished",
        "total_rounds": 2,
        "engine": {"phase": "finished", "round": 2, "error": "", "errors": []},
        "clients": 2,
        "arrived": {"features": 3, "rewards": 2, "expected": 2},
        "rounds": closed_rounds,
        "devices": [
            {
                "name": "alpha",
                "client_id": "alpha-1",
                "model_name": "m",
                "secagg_group": "default",
                "bytes_in": 2000,
                "bytes_out": 5000,
                "last_seen": closed_rounds[-1]["closed_at"],
                "revoked": False,
                "quarantined": None,
            },
            {
                "name": "gamma",
                "client_id": "gamma-1",
                "model_name": "m",
                "secagg_group": "default",
                "bytes_in": 2000,
                "bytes_out": 5000,
                "last_seen": None,
                "revoked": True,
                "quarantined": "features.put: out of range",
            },
        ],
    }
    console, out = _file_console()
    console.print(status_view(status, plain=True))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert lines[0] == "round 2/2 · finished · engine: ok"
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "closed"], ["2", "finished"]]
    devices = {line.split()[0]: line for line in lines if line.startswith(("alpha", "gamma"))}
    assert "5 s ago" in devices["alpha"] and "active" in devices["alpha"]
    assert "never" in devices["gamma"] and "revoked" in devices["gamma"]  # revoked says more than set aside
    console, out = _file_console()
    console.print(clients_table(status, plain=True))
    assert "\x1b[" not in out.getvalue() and len(out.getvalue().splitlines()) == 3
    # replicas on PostgreSQL: the head says which one answered and which one runs the rounds
    status["leadership"] = {"replica": "a:8765/1", "leader_replica": "b:8765/2", "database": "postgresql"}
    console, out = _file_console()
    console.print(status_view(status, plain=True))
    assert out.getvalue().splitlines()[0].rstrip().endswith("· replica a:8765/1, rounds run on b:8765/2")


def test_console_reporter_writes_whole_lines_to_a_file(closed_rounds, tmp_path: Path):
    """Progress bars are for terminals: in a file each stage leaves one line when it is done, and
    nothing else of the live display shows (no spinner frames, no cursor control)."""
    console, out = _file_console()
    settings = FederationSettings(workdir=tmp_path, rounds=2)
    with ConsoleReporter(console) as reporter:
        with reporter.stage("data") as stage:
            stage.note("cached")
        with reporter.stage("LLM teacher warm-up", 4) as stage:
            for step in range(1, 5):
                stage.advance(step)
            stage.note("llm-tiny, 4 steps")
        reporter.started("https://127.0.0.1:8765", settings, tmp_path / "logs")
        status = {
            "round": 1,
            "phase": "training",
            "total_rounds": 2,
            "clients": 3,
            "engine": {"phase": "training", "round": 1},
            "arrived": {"features": 3, "rewards": 1, "expected": 3},
        }
        reporter.status(status, settings)
        reporter.round_closed(closed_rounds[0], None, settings)
        reporter.finished(12.0, tmp_path / "last_run.json", tmp_path / "report.html")
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "⠋" not in text
    lines = text.splitlines()
    assert re.fullmatch(r"✓ data +\d+\.\d s  cached", lines[0])
    assert re.fullmatch(r"✓ LLM teacher warm-up +\d+\.\d s  llm-tiny, 4 steps", lines[1])
    assert (
        lines[2] == "federation: coordinator + 3 clients on https://127.0.0.1:8765 · 2 rounds · allocation lada · "
        f"logs in {tmp_path / 'logs'} · dashboard https://127.0.0.1:8765/dashboard"
    )
    assert (
        lines[3].startswith("round 1/2 · ")
        and lines[-1] == f"✓ done in 12 s; report {tmp_path / 'report.html'} (metrics in {tmp_path / 'last_run.json'})"
    )
    assert len(lines) == 3 + 6 + 1


def test_library_notes_go_to_the_log_file_and_not_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """transformers prints through its own stderr handler and draws tqdm bars: after the federation's
    logging set-up its warnings reach the log file only, its errors the console too, and tqdm is off."""
    from transformers.utils import logging as hf_logging

    from lada_coordinator.console import setup_console_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    console, out = _file_console()
    try:
        setup_console_logging(console, verbose=False, log_file=tmp_path / "federation.log")
        hf = hf_logging.get_logger("transformers.models.llama.tokenization_llama_fast")
        hf.warning("You are using the default legacy behaviour")
        hf.error("the checkpoint is damaged")
        for handler in root.handlers:
            handler.flush()
        assert os.environ.get("TQDM_DISABLE") == "1"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in saved[1]:
                handler.close()
        root.setLevel(saved[0])
        for handler in saved[1]:
            root.addHandler(handler)
        hf_logging.enable_default_handler()
        hf_logging.disable_propagation()
    shown = out.getvalue()
    kept = (tmp_path / "federation.log").read_text()
    assert "legacy behaviour" not in shown and "the checkpoint is damaged" in shown
    assert "legacy behaviour" in kept and "the checkpoint is damaged" in kept
