"""Drive :class:`lada_client.Bridge` on a laptop with the JSON the Android sample sends.

The request builders below produce the same requests, key for key, as ``LadaBridge.kt``; the
call sequence follows the sample app (``MainActivity.kt`` and ``RoundWorker.kt``): configure,
status, score a sample, enroll, then round steps spaced out as WorkManager would run them. Reply
codes are handled as ``RoundWorker`` handles them. So a change to the bridge can be checked here
before anyone rebuilds the app.

The device's files are laid out under ``--root`` as the app lays them out under its files dirs::

    <root>/model/model.onnx, tokenizer.json      (copied from the APK's assets on first start)
    <root>/data/manifest.json, clients/<name>/...  (the device's private data)
    <root>/state/                                  (identity key, enrollment, adapter; no backup)

Usage::

    # a tiny offline model and data set to try it with (needs lada-coordinator, which pulls lada-client[export]):
    python examples/android_bridge/drive_bridge.py --root /tmp/lada-phone --build-demo
    # score only; no coordinator needed:
    python examples/android_bridge/drive_bridge.py --root /tmp/lada-phone
    # also press "Train locally": the app configures no trainable checkpoint and ships no torch,
    # so this shows the "unsupported" reply the app handles:
    python examples/android_bridge/drive_bridge.py --root /tmp/lada-phone --train
    # take part in rounds of a running coordinator:
    python examples/android_bridge/drive_bridge.py --root /tmp/lada-phone \\
        --coordinator-url http://127.0.0.1:8765 --token <one-time token> --round-steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from lada_client import Bridge

log = logging.getLogger("drive_bridge")

# The sample question MainActivity scores when the "Score sample" button is pressed.
SAMPLE_CANDIDATE: dict[str, Any] = {
    "question": "Mia has 12 stickers and gives away 5. How many stickers does Mia have left?",
    "path": "12 - 5 = 7. The answer is 7.",
    "llm_logprob": -3.2,
    "llm_tokens": 14,
}

# RoundWorker's reading of error codes: transient ones are retried later, the rest need a person.
RETRY_CODES = frozenset({"busy", "coordinator_unreachable", "coordinator_error"})


# ----------------------------------------------------------------- requests, as LadaBridge.kt
def request(method: str, params: dict[str, Any] | None = None) -> str:
    """``LadaBridge.call``: ``{"method": ..., "params": {...}}``, params always present."""
    return json.dumps({"method": method, "params": params or {}})


def configure_request(root: Path, name: str, coordinator_url: str) -> str:
    """``LadaBridge.configure``: phone-sized settings (see the README for why each is set)."""
    return request(
        "configure",
        {
            "coordinator_url": coordinator_url,
            "name": name,
            "state_dir": str(root / "state"),
            "data_dir": str(root / "data"),
            "scoring_model": str(root / "model" / "model.onnx"),
            "batch_size": 4,
            "eval_size": 16,
            "max_offers": 8,
            "request_timeout_s": 30.0,
            "poll_interval_s": 2.0,
            "max_wait_s": 480.0,
            "runtime": {"intra_op_threads": 2},
        },
    )


def enroll_request(token: str) -> str:
    return request("enroll", {"token": token})


def score_request(candidates: list[dict[str, Any]]) -> str:
    return request("score", {"candidates": candidates})


def train_request(epochs: int = 1) -> str:
    """The "Train locally" button; the sample app has no torch, so it gets "unsupported"."""
    return request("train", {"epochs": epochs})


# ------------------------------------------------------------------------------------ driver
def send(bridge: Bridge, request_json: str) -> dict[str, Any]:
    """Send one request and return the parsed reply, logging both as the app's logcat would."""
    log.info(">>> %s", request_json if len(request_json) < 400 else request_json[:400] + "...")
    reply = json.loads(bridge.call(request_json))
    log.info("<<< %s", json.dumps(reply)[:1000])
    return reply


def drive(bridge: Bridge, args: argparse.Namespace) -> int:
    """The sample app's call sequence; returns a process exit code."""
    send(bridge, request("status"))
    reply = send(bridge, configure_request(args.root, args.name, args.coordinator_url))
    if not reply["ok"]:
        return 2
    scored = send(bridge, score_request([SAMPLE_CANDIDATE]))
    if not scored["ok"]:
        return 2
    if args.train:
        trained = send(bridge, train_request())
        if not trained["ok"] and trained["error"]["code"] != "unsupported":
            return 2
    if args.token:
        enrolled = send(bridge, enroll_request(args.token))
        if not enrolled["ok"]:
            return 2
    for step in range(args.round_steps):
        reply = send(bridge, request("round_step"))
        if reply["ok"]:
            result = reply["result"]
            if result["phase"] == "finished":
                log.info("federation finished")
                break
        elif reply["error"]["code"] not in RETRY_CODES:
            return 2
        if step + 1 < args.round_steps:
            time.sleep(args.interval)
    send(bridge, request("status"))
    send(bridge, request("shutdown"))
    return 0


def build_demo(root: Path, name: str) -> None:
    """A tiny untrained SLM and one client's data, built offline (needs lada-coordinator)."""
    from lada_client import format_prompt, format_target
    from lada_client.tools import export_scoring_model
    from lada_coordinator.simulation.domains import make_federation
    from lada_coordinator.simulation.factory import create_model
    from lada_coordinator.simulation.tokenizer import build_tokenizer, save_tokenizer

    if name != "client0":
        raise SystemExit("--build-demo builds data for client0; use --name client0")
    federation = make_federation(["add"], n_train=32, n_test=8, n_public=32, seed=0)
    federation.save(root / "data")
    texts = [format_prompt(s.question) + format_target(s.rationale) for s in federation.public]
    texts += [format_prompt(s.question) + format_target(s.rationale) for s in federation.clients[0].train]
    save_tokenizer(build_tokenizer(texts), root / "build" / "tokenizer")
    create_model("slm-small", root / "build" / "tokenizer", root / "build" / "base")
    export_scoring_model(root / "build" / "base", root / "model" / "model.onnx")
    log.info("demo model and data written under %s", root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="device files root (model/, data/, state/)")
    parser.add_argument("--name", default="client0", help="client name; must be a client in data/manifest.json")
    parser.add_argument("--coordinator-url", default="http://127.0.0.1:8765")
    parser.add_argument("--token", help="one-time enrollment token (first run only)")
    parser.add_argument("--round-steps", type=int, default=0, help="how many round_step calls to make")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between round steps")
    parser.add_argument(
        "--train", action="store_true", help='also press "Train locally" (answered "unsupported", as in the app)'
    )
    parser.add_argument("--build-demo", action="store_true", help="first build a tiny offline model and data set")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.build_demo:
        build_demo(args.root, args.name)
    return drive(Bridge(), args)


if __name__ == "__main__":
    sys.exit(main())
