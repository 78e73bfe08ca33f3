"""``lada-coordinator``: serve, issue enrollment tokens, watch and manage a running coordinator
(``status``, ``clients``, ``revoke``), or run a whole local federation.

Commands that print data take ``--json`` for scripts; without it they print tables for a person
(``console.py``). An operator's mistake (a wrong ``--config``, a coordinator that is not running, a
token that does not match) is one ``lada-coordinator: error: …`` line and exit code 2, not a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import TypeAdapter, ValidationError

from lada_client.common.argtypes import int_at_least
from lada_client.common.config_io import ConfigError
from lada_client.common.logs import setup_logging
from lada_client.config import ComputeSettings
from lada_coordinator.config import (
    AllocationMode,
    Batching,
    CoordinatorConfig,
    DatabaseUrl,
    LLMServerSettings,
    PromptLogprobs,
)
from lada_coordinator.credentials import DEFAULT_TOKEN_TTL_S
from lada_coordinator.stores.records import DEFAULT_GROUP

if TYPE_CHECKING:
    from rich.console import Console

    from lada_coordinator.stores import CoordinatorStore
    from lada_coordinator.stores.records import TokenRecord


#: ``serve`` flags that set a field of the config's ``llm_server`` section
LLM_SERVER_FLAGS: dict[str, str] = {
    "llm_server_url": "url",
    "llm_server_model": "model",
    "llm_server_logprobs": "prompt_logprobs",
    "llm_server_batching": "batching",
}


def serve_config(args: argparse.Namespace) -> CoordinatorConfig:
    """The config ``serve`` runs with: the file's, with the flags given on top. ``--llm-server-*``
    flags change the file's ``llm_server`` section, or make one (then with a URL and a model)."""
    config = CoordinatorConfig.load(args.config, database_url=args.database_url).with_overrides(
        host=args.host,
        port=args.port,
        rounds=args.rounds,
        allocation=args.allocation,
        max_body_bytes=args.max_body_bytes,
        upload_ttl_s=args.upload_ttl,
        upload_max_client_bytes=args.upload_max_client_bytes,
    )
    compute = {field: getattr(args, f"llm_{field}") for field in ("device", "dtype") if getattr(args, f"llm_{field}")}
    if compute:
        config = config.with_overrides(llm_compute=dataclasses.replace(config.llm_compute, **compute))
    given = {field: getattr(args, dest) for dest, field in LLM_SERVER_FLAGS.items() if getattr(args, dest) is not None}
    if not given:
        return config
    if config.llm_server is not None:
        return config.with_overrides(llm_server=dataclasses.replace(config.llm_server, **given))
    if "url" not in given or "model" not in given:
        raise ValueError(
            "--llm-server-url and --llm-server-model go together when the config has no llm_server section"
        )
    return config.with_overrides(llm_server=LLMServerSettings(**given))


def _serve(args: argparse.Namespace) -> int:
    from lada_coordinator.server.run import serve

    config = serve_config(args)
    serve(config, args.llm_eval_data, args.llm_eval_size, args.tls_cert, args.tls_key, args.insecure_http)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when nothing failed (warnings allowed), 1 otherwise."""
    from lada_client.common.preflight import as_json, failed, render
    from lada_coordinator.preflight import run_checks

    checks = run_checks(
        args.config,
        load_llm=not args.no_llm,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure_http=args.insecure_http,
    )
    print(as_json(checks) if args.json else render(checks))
    return 1 if failed(checks) else 0


def _gen_cert(args: argparse.Namespace) -> int:
    from lada_coordinator.server.tls import generate_self_signed

    cert, key = generate_self_signed(args.out, args.host or ["127.0.0.1", "localhost"], args.days)
    print(f"wrote {cert} and {key}; give clients ca_cert={cert}")
    return 0


def _config(args: argparse.Namespace) -> CoordinatorConfig:
    """The config of a command that opens the store: the file's, with ``--database-url`` on top."""
    return CoordinatorConfig.load(args.config, database_url=args.database_url)


def _store(args: argparse.Namespace) -> CoordinatorStore:
    from lada_coordinator.stores import open_store

    return open_store(_config(args))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _console() -> Console:
    from lada_coordinator.console import make_console

    return make_console()


def _show(args: argparse.Namespace, data: Any, view: str, *view_args: Any) -> int:
    """``data`` as JSON with ``--json``, else drawn by ``console.<view>(*view_args, plain)``."""
    if args.json:
        _print_json(data)
        return 0
    from lada_coordinator import console as views

    console = _console()
    console.print(getattr(views, view)(*view_args, not console.is_terminal))
    return 0


def _issue_token(args: argparse.Namespace) -> int:
    from lada_coordinator.credentials import issue_tokens, load_identity

    config = _config(args)
    store = _store(args)
    try:
        tokens = issue_tokens(store, load_identity(config.state_dir), args.count, args.ttl_hours * 3600.0, args.group)
    finally:
        store.close()
    if args.json:
        _print_json(
            {
                "tokens": tokens,
                "group": args.group,
                "ttl_hours": args.ttl_hours,
                "expires_at": time.time() + args.ttl_hours * 3600.0,
            }
        )
        return 0
    for token in tokens:
        print(token)
    print(
        f"{len(tokens)} token(s) for group {args.group!r}, valid {args.ttl_hours:g} h; each enrolls one device once",
        file=sys.stderr,
    )
    return 0


def _token_state(r: TokenRecord, now: float) -> str:
    """What ``tokens`` says of one token: used by whom, revoked, expired, or how long it stays open."""
    if r.used_by:
        return "used by " + r.used_by
    if r.revoked:
        return "revoked"
    if r.expires_at is None or r.expires_at <= now:
        return "expired"
    return f"open, {(r.expires_at - now) / 3600:.1f} h left"


def _tokens(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.tokens()
    finally:
        store.close()
    now = time.time()
    listed = [
        {
            "token_id": r.token_id,
            "group": r.secagg_group,
            "state": _token_state(r, now),
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "used_by": r.used_by,
            "revoked": r.revoked,
        }
        for r in rows
    ]
    return _show(args, listed, "tokens_table", listed)


def _revoke_token(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        n = store.revoke_token(args.token_id)
    finally:
        store.close()
    if n == 0:
        raise ValueError(f"no open token with id {args.token_id!r} (see `lada-coordinator tokens`)")
    if args.json:
        _print_json({"revoked_tokens": n})
    else:
        print(f"revoked {n} token(s)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        done = store.revoke_client(args.client)
    finally:
        store.close()
    if not done:
        raise ValueError(f"no enrolled device named {args.client!r} (see `lada-coordinator clients`)")
    if args.json:
        _print_json({"revoked": args.client})
    else:
        print(f"revoked {args.client}: its requests are refused from now on")
    return 0


def _operator_status(args: argparse.Namespace) -> dict:
    from lada_coordinator.operator_client import OperatorClient

    return OperatorClient.for_config(CoordinatorConfig.load(args.config), args.url, args.ca_cert).status()


def _status(args: argparse.Namespace) -> int:
    status = _operator_status(args)
    return _show(args, status, "status_view", status)


def _clients(args: argparse.Namespace) -> int:
    status = _operator_status(args)
    return _show(args, status["devices"], "clients_table", status)


def _teacher_paths(args: argparse.Namespace) -> int:
    from lada_client.data.federation import load_public
    from lada_coordinator.llm.llamacpp import DEFAULT_PROMPT, LlamaCppTeacher, fill_store
    from lada_coordinator.llm.paths import PathStore

    prompt = args.prompt_file.read_text() if args.prompt_file else DEFAULT_PROMPT
    samples = load_public(args.public)
    teacher = LlamaCppTeacher(args.gguf, prompt, max_new_tokens=args.max_new_tokens, seed=args.seed)
    store = PathStore(args.out, teacher.digest, prompt)
    store.write_header(str(args.gguf))

    def progress(done: int, total: int, verified: int) -> None:
        if done % 25 == 0 or done == total:
            print(f"teacher paths: {done}/{total} questions, {verified} verified", file=sys.stderr, flush=True)

    stats = fill_store(teacher, store, samples, args.attempts, args.temperature, args.seed, progress)
    served = sum(1 for s in samples if (r := store.get(s)) is not None and r.correct)
    print(
        f"{args.out}: {served}/{len(samples)} public questions have a verified path ({stats['new']} new); "
        f"set teacher_paths in the coordinator config to serve them"
    )
    return 0


def _import_llm(args: argparse.Namespace) -> int:
    from lada_client.models.importer import import_checkpoint

    print(f"imported: llm_dir={import_checkpoint(args.source, args.out)}")
    return 0


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _value_type(hint: Any) -> Any:
    """The type a settings field holds, without its constraints (``Annotated``) and ``None``."""
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        else:
            return hint


def _parser(kind: Any) -> Callable[[str], Any]:
    """How a flag's text becomes a value of the type ``kind`` (a path or a string: ``kind(text)``)."""
    origin = typing.get_origin(kind) or kind
    if origin is int:
        return _integer
    if origin is float:
        return float
    if origin is tuple:
        return _names
    return typing.cast("Callable[[str], Any]", kind)


def _checked(hint: Any, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=``: ``parse`` the text, then check the value against the settings field's
    type ``hint`` (ranges, choices), so that a bad value is a usage error naming its flag."""

    def check(text: str) -> Any:
        value = parse(text)
        try:
            return TypeAdapter(hint).validate_python(value)
        except ValidationError as exc:
            problems = ConfigError.from_validation(exc, "").problems
            raise argparse.ArgumentTypeError("; ".join(f"{f}: {m}" if f else m for f, m in problems)) from None

    check.__name__ = getattr(parse, "__name__", "value")  # argparse's "invalid <name> value: ..."
    return check


def _federation_flags(p: argparse.ArgumentParser) -> None:
    """The ``federation`` flags, derived from :class:`FederationSettings`: each flag's default
    (shown in the help), its choices (a field's ``Literal``) and the check of its value (the
    field's type and range). A flag left out takes the ``--preset``'s value, else the settings'
    default, so nothing is written twice."""
    from lada_coordinator.federation import PRESETS, FederationSettings, defaults
    from lada_coordinator.simulation.domains import DOMAIN_SETS

    d = defaults()
    hints = typing.get_type_hints(FederationSettings, include_extras=True)

    def flag(
        name: str,
        help: str,
        parse: Callable[[str], Any] | None = None,
        dest: str | None = None,
        choices: list[str] | None = None,
    ) -> None:
        """``name`` sets the field ``dest`` (by default the flag's name); ``parse`` turns its text
        into a value (by default as the field's type says: an integer, a number, a path, a list)."""
        field = dest or name.lstrip("-").replace("-", "_")
        shown = d.get(field)
        if isinstance(shown, tuple):
            shown = ",".join(shown)
        text = f"{help} (default: {shown})" if shown not in (None, "", ()) else help
        kind = _value_type(hints[field])
        kwargs: dict[str, Any] = {}
        if typing.get_origin(kind) is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _checked(hints[field], parse or _parser(kind))
            if choices is not None:
                kwargs["choices"] = choices
        p.add_argument(name, dest=field, default=None, help=text, **kwargs)

    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="; ".join(f"{name}: {preset.what}" for name, preset in sorted(PRESETS.items())),
    )
    flag("--workdir", "where data, models and the run live")
    flag("--clients", "client processes")
    flag("--rounds", "rounds")
    flag(
        "--allocation",
        "lada: learnability filters; random: same budget at random; all: every candidate; none: local-only",
    )
    flag("--candidates", "candidates per round")
    flag("--budget", "per-client allocation budget B")
    flag("--coverage", "share of each LaDa selection spread over the pool by k-means instead of by score")
    # 0 (a free port) is no address the clients could be given
    flag("--port", "coordinator port on 127.0.0.1", int_at_least(1))
    flag("--seed", "seed of data, models and allocation")
    flag("--n-train", "private training samples per client")
    flag("--n-test", "private test samples per client")
    flag("--n-public", "public pool size")
    flag("--offer-questions", "public questions clients may answer for the LLM")
    flag("--llm-epochs", "the LLM's training passes per round over the SLM paths it chose")
    flag("--llm-alpha", "weight of L_CD in the LLM's LoRA step (0 = SFT-only)")
    flag("--llm-rehearsal", "the LLM's own verified paths trained alongside, per SLM path it chose (0 = off)")
    flag("--llm-warmup-steps", "warm-start steps of the tiny LLM teacher (0 = none: random weights)")
    flag("--slm-warmup-steps", "warm-start steps of each SLM (0 = none)")
    flag("--timeout", "give up after this many seconds", dest="timeout_s")
    flag("--tls", "https with a generated self-signed certificate; --no-tls: plain http on loopback")
    flag("--alpha", "weight of L_CD on the clients (0 = SFT-only baseline)")
    flag("--epochs", "clients' training passes per round over private data + allocated paths")
    flag("--dp-noise", "DP noise multiplier on client features (0 = off)")
    flag(
        "--host-framework",
        "mkt: mutual knowledge transfer; cotuning: + secure FedAvg of same-architecture SLM adapters",
    )
    flag("--slm-presets", "comma-separated SLM sizes, assigned to clients in turn")
    flag("--llm-checkpoint", "local transformers checkpoint to use as the teacher instead of warm-starting llm-tiny")
    flag(
        "--families",
        "reasoning-gym task families, one per client in turn, e.g. chain_sum,simple_equations,"
        "leg_counting (settings: 'chain_sum:max_terms=3;leg_counting'); none: the toy arithmetic domains",
    )
    flag("--public-families", "families of the public pool (none: the clients')")
    flag(
        "--toy-domains",
        "toy domain set without --families: arithmetic facts, or rules a tiny model learns",
        choices=list(DOMAIN_SETS),
    )
    flag("--llm-unseen", "toy domains left out of the tiny LLM's warm-up (known only to clients)")
    flag("--public-seed", "keep the public pool fixed across --seed values")
    flag(
        "--students",
        "GGUF files or checkpoints imported as the clients' SLMs, comma-separated, in turn "
        "(one: every client's; e.g. SmolLM2 and Gemma 3 for a mixed fleet)",
    )
    flag("--teacher-gguf", "the teacher as a GGUF file on llama.cpp; its verified paths are computed once")
    flag("--teacher-cache", "where --teacher-gguf's paths are kept (none: WORKDIR/teacher/paths.jsonl)")
    flag("--reward", "what the clients' reward measures")
    flag("--credit", "per-sample or per-round reward")
    flag("--private-sft", "private samples trained with L_SFT")
    flag("--eval-size", "test questions each client evaluates per round")
    flag("--max-new-tokens", "clients' generation cap")
    flag("--features", "learnability features, comma-separated (none: the coordinator's)")


def _log_file(workdir: Path) -> Path:
    """The federation's own log in ``workdir``, which is made here: a workdir that cannot be (a
    file, a place this user may not write) is a ``--workdir`` error before anything starts."""
    from lada_coordinator.federation import LOG_FILE

    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / LOG_FILE).touch()
    except OSError as exc:
        raise ValueError(f"--workdir {workdir}: cannot write {exc.filename or workdir}: {exc.strerror}") from exc
    return workdir / LOG_FILE


def _federation(args: argparse.Namespace) -> int:
    from lada_coordinator.console import ConsoleReporter, make_console, setup_console_logging
    from lada_coordinator.federation import run_federation, settings_from

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "preset", "verbose") and v is not None}
    settings = settings_from(args.preset, verbose=args.verbose, **given)
    log_file = _log_file(settings.workdir)
    console = make_console()
    setup_console_logging(console, args.verbose, log_file)
    with ConsoleReporter(console, make_console(stderr=True)) as reporter:
        return run_federation(settings, reporter=reporter)


def _names(text: str | None) -> tuple[str, ...]:
    """A ';'-separated list (reasoning-gym family settings use ','), or ',' when there is no ';'."""
    if not text:
        return ()
    parts = text.split(";") if ";" in text else text.split(",") if ":" not in text else [text]
    return tuple(p.strip() for p in parts if p.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lada-coordinator", description="LaDa coordinator")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, libraries' (httpx, uvicorn …) included"
    )
    # -v also after the command (`bash scripts/federation.sh -v`); SUPPRESS keeps a -v given before it
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def operator(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            required=True,
            help="the coordinator's JSON config (its state_dir holds the operator token)",
        )
        p.add_argument(
            "--url", help="where the coordinator serves (default: the address it recorded in state_dir/endpoint.json)"
        )
        p.add_argument(
            "--ca-cert",
            type=Path,
            help="PEM certificate to verify its https with (default: the self-signed one it recorded)",
        )
        p.add_argument("--json", action="store_true", help="print the JSON document instead of tables")

    def database_url(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url",
            type=_checked(DatabaseUrl, str),
            help="a PostgreSQL database shared by several coordinator replicas, postgresql://user@host:5432/db"
            " (config: database_url; instead of db_path; docs/deployment.md)",
        )

    p = sub.add_parser("serve", parents=[verbose], help="run the coordinator HTTP server and round engine")
    p.add_argument("--config", type=Path, required=True, help="coordinator JSON config")
    database_url(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--allocation", choices=typing.get_args(AllocationMode))
    p.add_argument("--llm-eval-data", type=Path, help="federation data dir whose test splits evaluate the LLM")
    p.add_argument(
        "--llm-eval-size",
        type=int_at_least(1),
        help="test questions per client the LLM is evaluated on (with --llm-eval-data; default: as many as"
        " a client evaluates itself on by default)",
    )
    compute_hints = typing.get_type_hints(ComputeSettings, include_extras=True)
    p.add_argument(
        "--llm-device",
        type=_checked(compute_hints["device"], str),
        help="where the in-process LLM runs: auto (the first GPU, else the CPU), cpu, cuda or cuda:N"
        " (config: llm_compute.device)",
    )
    p.add_argument(
        "--llm-dtype",
        choices=typing.get_args(compute_hints["dtype"]),
        help="the LLM's base-weight precision: auto (bfloat16 on a GPU that has it, else float32), float32,"
        " bfloat16 (llm_compute.dtype)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve https")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--max-body-bytes", type=int, help="largest request body; larger uploads come in chunks")
    p.add_argument("--upload-ttl", type=float, help="seconds a chunked upload session lives after its last chunk")
    p.add_argument("--upload-max-client-bytes", type=int, help="bytes of open chunked uploads one client may hold")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain http on a non-loopback address (default there: https, self-signed if no --tls-cert)",
    )
    server_hints = typing.get_type_hints(LLMServerSettings, include_extras=True)
    p.add_argument(
        "--llm-server-url",
        type=_checked(server_hints["url"], str),
        help="the LLM on an inference engine (OpenAI-compatible completions API), e.g. http://gpu-host:8000;"
        " see docs/serving.md (config: llm_server.url)",
    )
    p.add_argument(
        "--llm-server-model",
        type=_checked(server_hints["model"], str),
        help="the name the engine serves the LLM under (llm_server.model)",
    )
    p.add_argument(
        "--llm-server-logprobs",
        choices=typing.get_args(PromptLogprobs),
        help="how the engine scores prompts: vllm (prompt_logprobs), echo (echo + logprobs), none (it cannot:"
        " the in-process LLM of llm_dir scores; llama.cpp servers) (llm_server.prompt_logprobs; default: vllm)",
    )
    p.add_argument(
        "--llm-server-batching",
        choices=typing.get_args(Batching),
        help="lists: many prompts and n samples per request (vLLM); single: one each (llama.cpp servers)"
        " (llm_server.batching; default: lists)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "check",
        parents=[verbose],
        help="preflight: config, packages, state dir, database, public pool, LLM loads, TLS, port",
    )
    p.add_argument("--config", type=Path, required=True, help="coordinator JSON config")
    p.add_argument("--tls-cert", type=Path, help="as on serve: the certificate it would use")
    p.add_argument("--tls-key", type=Path, help="as on serve: the key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true", help="as on serve")
    p.add_argument("--no-llm", action="store_true", help="do not load the LLM (only check its checkpoint directory)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=_check)

    p = sub.add_parser("gen-cert", parents=[verbose], help="write a self-signed TLS certificate for local use")
    p.add_argument("--out", type=Path, required=True, help="directory for cert.pem and key.pem")
    p.add_argument("--host", action="append", help="host name or IP the certificate is for (repeatable)")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_gen_cert)

    p = sub.add_parser(
        "issue-token", parents=[verbose], help="print one-time enrollment tokens (they name this coordinator's key)"
    )
    p.add_argument("--config", type=Path, required=True)
    database_url(p)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--ttl-hours", type=float, default=DEFAULT_TOKEN_TTL_S / 3600, help="hours a token stays valid")
    p.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help="secure-aggregation group of the devices enrolled with these tokens (co-tuning)",
    )
    p.add_argument("--json", action="store_true", help="print the tokens, group and expiry as JSON")
    p.set_defaults(func=_issue_token)

    p = sub.add_parser("tokens", parents=[verbose], help="list enrollment tokens (id, group, state)")
    p.add_argument("--config", type=Path, required=True)
    database_url(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_tokens)

    p = sub.add_parser("revoke-token", parents=[verbose], help="revoke an unused enrollment token")
    p.add_argument("--config", type=Path, required=True)
    database_url(p)
    p.add_argument("token_id", help="its id as `tokens` lists it (at least 8 hex digits)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_revoke_token)

    p = sub.add_parser("revoke", parents=[verbose], help="revoke an enrolled device (by name or client id)")
    p.add_argument("--config", type=Path, required=True)
    database_url(p)
    p.add_argument("client")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_revoke)

    p = sub.add_parser(
        "status", parents=[verbose], help="a running coordinator's rounds, phase and devices (operator token)"
    )
    operator(p)
    p.set_defaults(func=_status)

    p = sub.add_parser(
        "clients", parents=[verbose], help="a running coordinator's enrolled devices: last seen, set aside, revoked"
    )
    operator(p)
    p.set_defaults(func=_clients)

    p = sub.add_parser(
        "teacher-paths",
        parents=[verbose],
        help="compute the teacher's verified reasoning paths over the public pool ahead of time (llama.cpp)",
    )
    p.add_argument("--gguf", type=Path, required=True, help="the teacher as a GGUF file")
    p.add_argument("--public", type=Path, required=True, help="federation data directory (its public.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="path store (JSON Lines; appended to, so a rerun resumes)")
    p.add_argument(
        "--prompt-file",
        type=Path,
        help="few-shot prefix for the teacher (default: lada_coordinator.llm.llamacpp.DEFAULT_PROMPT)",
    )
    p.add_argument("--attempts", type=int, default=2, help="greedy first, then sampled attempts until one is right")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_teacher_paths)

    p = sub.add_parser(
        "import-llm",
        parents=[verbose],
        help="import a GGUF file or transformers checkpoint as the coordinator's LLM (llm_dir)",
    )
    p.add_argument("source", type=Path, help="a .gguf file or a checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help="where the float32 checkpoint goes (cached)")
    p.set_defaults(func=_import_llm)

    p = sub.add_parser(
        "federation", parents=[verbose], help="build models and data, then run coordinator + clients on loopback"
    )
    _federation_flags(p)
    p.set_defaults(func=_federation)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "federation":  # the federation sets up its console and log file itself
        setup_logging(args.verbose)
    from lada_coordinator.operator_client import OperatorError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, OperatorError) as exc:
        print(f"lada-coordinator: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
