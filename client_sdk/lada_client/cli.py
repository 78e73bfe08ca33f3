"""``lada-client``: enroll a device and take part in federation rounds."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from lada_client.common.argtypes import int_at_least
from lada_client.common.logs import setup_logging
from lada_client.config import ClientConfig, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lada-client", description="LaDa federated distillation client")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, libraries' (httpx …) included")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="enroll if needed, then take part in rounds until the federation ends")
    run.add_argument("--config", type=Path, required=True, help="client JSON config")
    run.add_argument("--token", help="one-time enrollment token (first run only)")
    run.add_argument("--coordinator-url")
    run.add_argument("--max-rounds", type=int_at_least(1), help="stop after this many rounds")
    run.add_argument("--results", type=Path, help="write per-round results as JSON here")
    imp = sub.add_parser("import-model", help="import a GGUF file or transformers checkpoint as this device's SLM")
    imp.add_argument("source", type=Path, help="a .gguf file or a checkpoint directory")
    imp.add_argument("--out", type=Path, required=True, help="directory for checkpoint/ and onnx/ (cached)")
    chk = sub.add_parser(
        "check", help="preflight: packages, config, data, ONNX graph, training, coordinator, TLS, clock"
    )
    chk.add_argument("--config", type=Path, required=True, help="client JSON config")
    chk.add_argument("--token", help="enrollment token to check against the coordinator's key")
    chk.add_argument("--coordinator-url")
    chk.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "import-model":
        return _import_model(args)
    if args.command == "check":
        return _check(args)
    try:  # a bad file is one readable error (every bad field named), never a traceback
        config = ClientConfig.load(args.config)
    except ValueError as exc:
        print(f"lada-client: error: {exc}", file=sys.stderr)
        return 2
    try:
        config = config.with_overrides(token=args.token, coordinator_url=args.coordinator_url)
    except ConfigError as exc:  # a bad flag value: argparse's usage error, naming the flag
        field, message = exc.problems[0]
        run.error(f"argument --{field.replace('_', '-')}: {message}")
    from lada_client.client import LadaClient
    from lada_client.scoring.onnx_slm import ModelLoadError
    from lada_client.training.backend import BackendUnavailable
    from lada_client.transport import CoordinatorError

    try:
        from lada_client.progress import TerminalProgress

        # on a terminal, one live line per long step; otherwise the default log lines
        progress = TerminalProgress(sys.stderr, f"{config.name} ") if sys.stderr.isatty() else None
        with LadaClient(config, progress=progress) as client:
            results = client.run(args.max_rounds)
    except (ValueError, FileNotFoundError, ModelLoadError, CoordinatorError, BackendUnavailable) as exc:
        print(f"lada-client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.results:
        args.results.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when nothing failed (warnings allowed), 1 otherwise."""
    from lada_client.common.preflight import as_json, failed, render
    from lada_client.preflight import run_checks

    checks = run_checks(args.config, token=args.token, coordinator_url=args.coordinator_url)
    print(as_json(checks) if args.json else render(checks))
    return 1 if failed(checks) else 0


def _import_model(args: argparse.Namespace) -> int:
    """Checkpoint (LoRA training) + ONNX scoring graph; prints the two config lines to use."""
    try:
        from lada_client.models.importer import import_slm

        imported = import_slm(args.source, args.out)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"lada-client: error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps({"base_model_dir": str(imported.checkpoint), "scoring_model": str(imported.scoring_model)}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
