"""A string-in/string-out JSON API over the client SDK, for embedding it in a mobile app.

A Kotlin or Java app reaches Python through Chaquopy or a JNI bridge. Across that boundary,
Python exceptions surface as opaque platform errors and Python objects are awkward to hold, so
everything crosses as one JSON string each way, through one entry point::

    reply = Bridge().call('{"method": "score", "params": {"candidates": [...]}}')

    {"ok": true,  "result": ...}
    {"ok": false, "error": {"code": "not_configured", "message": "..."}}

:meth:`Bridge.call` never raises and never returns a stack trace: unexpected failures are logged
(with their traceback) and reported as ``internal``. A request may carry an ``"id"``; the reply
echoes it so an app can match replies to requests.

Methods
=======

``configure``   params: :class:`~lada_client.config.ClientConfig` fields, plus an optional
                ``runtime`` object (``providers``, ``intra_op_threads``). Builds the client;
                offline. Reconfiguring replaces the previous client.
``enroll``      params: ``token`` (needed once; later calls reuse the stored enrollment).
``score``       params: ``candidates`` (list of ``{question, path, llm_logprob, llm_tokens}``,
                optional ``sample_id``), optional ``feature_names``. Learnability feature rows from
                the on-device SLM; needs no coordinator.
``round_step``  Takes part in ONE round if the coordinator has one collecting features, else
                reports the phase; meant to be scheduled by a background worker.
``train``       params: optional ``epochs``, ``max_samples``. A local-only LoRA update on the
                device's private data; needs the ``train`` extra (torch).
``status``      Never blocks, even while another method runs: enrollment, model, providers, last
                results, bytes exchanged with the coordinator.
``shutdown``    Closes the connection and forgets the client.

Error codes
===========

``bad_request`` (malformed JSON, bad params), ``unknown_method``, ``not_configured``,
``bad_config``, ``model_load_failed``, ``not_enrolled``, ``coordinator_unreachable``,
``coordinator_rejected`` (4xx: bad token, wrong round...), ``coordinator_untrusted`` (the server's
key is not the one the enrollment token names: wrong URL or an interception), ``coordinator_error``
(5xx, invalid or late replies), ``unsupported``, ``busy``, ``internal``. A token that is not an
enrollment token at all is a ``bad_request``.

Threading
=========

Methods other than ``status`` run one at a time. A second one arriving while the first runs is
answered ``busy`` at once instead of blocking the caller's thread: a round can take minutes, and a
blocked UI thread is an "application not responding" kill. Workers should retry later on ``busy``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from lada_client.capabilities import has_module
from lada_client.client import LadaClient
from lada_client.common.crypto import CryptoError
from lada_client.common.enrollment import TokenFormatError
from lada_client.common.wire import Candidate
from lada_client.config import ClientConfig
from lada_client.scoring.features import FEATURE_NAMES, learnability_features
from lada_client.scoring.onnx_slm import ModelLoadError, OnnxSLM
from lada_client.transport import CoordinatorError

__all__ = ["ERROR_CODES", "Bridge", "BridgeError", "RuntimeOptions"]

log = logging.getLogger(__name__)

ERROR_CODES: frozenset[str] = frozenset(
    {
        "bad_request",
        "unknown_method",
        "not_configured",
        "bad_config",
        "model_load_failed",
        "not_enrolled",
        "coordinator_unreachable",
        "coordinator_rejected",
        "coordinator_error",
        "unsupported",
        "busy",
        "internal",
    }
)

#: Larger requests are refused before parsing: a phone should not build a huge object graph.
MAX_REQUEST_CHARS = 32 * 1024 * 1024
#: The most candidates one ``score`` call takes (the wire's own limit on a feature upload).
MAX_SCORE_CANDIDATES = 8192

# Where LadaClient saves the LoRA adapter in ``state_dir`` (reported by ``train``).
_ADAPTER_DIR = "adapter"
# The bridge's own bookkeeping, kept next to LadaClient's so it survives app restarts.
_BRIDGE_STATE = "bridge_state.json"

_REQUEST_KEYS = frozenset({"method", "params", "id"})


class BridgeError(Exception):
    """An expected failure with an error code from :data:`ERROR_CODES` and a readable message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown bridge error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime settings for the scoring model (``configure``'s optional ``runtime`` object).

    Phones have a few fast and several slow cores: pinning ``intra_op_threads`` to the fast ones
    often scores faster, and always heats the device less, than onnxruntime's default of one
    thread per core. ``providers`` lists execution providers in order of preference.
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0

    @classmethod
    def from_params(cls, value: object) -> RuntimeOptions:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise BridgeError("bad_config", "runtime must be an object with 'providers' and/or 'intra_op_threads'")
        unknown = set(value) - {"providers", "intra_op_threads"}
        if unknown:
            raise BridgeError("bad_config", f"unknown runtime key(s): {sorted(unknown)}")
        providers = value.get("providers")
        if providers is not None and (
            not isinstance(providers, list) or not providers or not all(isinstance(p, str) and p for p in providers)
        ):
            raise BridgeError("bad_config", "runtime.providers must be a non-empty list of provider names")
        threads = value.get("intra_op_threads", 0)
        if not _is_int(threads) or threads < 0:
            raise BridgeError(
                "bad_config", "runtime.intra_op_threads must be an integer >= 0 (0 = onnxruntime's default)"
            )
        return cls(tuple(providers) if providers is not None else None, threads)


class _TunedClient(LadaClient):
    """A :class:`LadaClient` whose scoring model runs with the app's :class:`RuntimeOptions`, at
    start-up and after every adapter refresh."""

    def __init__(self, config: ClientConfig, runtime: RuntimeOptions) -> None:
        self.runtime = runtime  # set first: LadaClient.__init__ loads the model
        super().__init__(config)

    def load_slm(self, path: Path) -> OnnxSLM:
        return OnnxSLM(
            path,
            providers=self.runtime.providers,
            max_length=self.config.distill.max_length,
            intra_op_threads=self.runtime.intra_op_threads,
            max_new_tokens=self.config.max_new_tokens,
        )


@dataclass
class _History:
    """What the app shows between runs: rounds taken part in, last round and training results.

    Stored per enrolled client id, so enrolling against a new federation (whose round numbers
    start again at 1) does not make the device skip its rounds.
    """

    client_id: str | None = None
    done_rounds: list[int] | None = None
    last_round: dict[str, Any] | None = None
    last_train: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> _History:
        if not path.exists():
            return cls(done_rounds=[])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            history = cls(
                client_id=data.get("client_id"),
                done_rounds=[int(r) for r in data.get("done_rounds", [])],
                last_round=data.get("last_round"),
                last_train=data.get("last_train"),
            )
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable bridge state %s: %s", path, exc)
            return cls(done_rounds=[])
        return history

    def save(self, path: Path) -> None:
        """Write atomically, so a process killed mid-write never leaves a truncated file."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), allow_nan=False, default=str), encoding="utf-8")
        os.replace(tmp, path)

    def for_client(self, client_id: str) -> None:
        if self.client_id != client_id:
            self.client_id = client_id
            self.done_rounds = []
            self.last_round = None


class Bridge:
    """One device's SDK behind a JSON-string API. Create one per process and keep it.

    Holds no global state: an app that wants two clients (say, two federations) creates two
    bridges with different ``state_dir``.
    """

    def __init__(self) -> None:
        self._client: LadaClient | None = None
        self._history = _History(done_rounds=[])
        self._known_round = 0
        # _op_lock serialises the methods that use the client; _state_lock guards the references
        # status reads, so status answers while a round runs.
        self._op_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "configure": self._configure,
            "enroll": self._enroll,
            "score": self._score,
            "round_step": self._round_step,
            "train": self._train,
            "status": self._status,
            "shutdown": self._shutdown,
        }

    # ------------------------------------------------------------------------------ entry point
    def call(self, request_json: str) -> str:
        """Run one JSON request and return the JSON reply. Never raises."""
        started = time.perf_counter()
        method = "?"
        request_id: object = None
        try:
            method, params, request_id = _parse_request(request_json)
            handler = self._handlers.get(method)
            if handler is None:
                raise BridgeError("unknown_method", f"unknown method {method!r}; methods: {sorted(self._handlers)}")
            if method == "status":
                result = handler(params)
            else:
                if not self._op_lock.acquire(blocking=False):
                    raise BridgeError("busy", f"another call is running; retry {method!r} when it has finished")
                try:
                    result = handler(params)
                finally:
                    self._op_lock.release()
            reply: dict[str, Any] = {"ok": True, "result": result}
            log.debug("bridge %s: ok in %.2fs", method, time.perf_counter() - started)
        except BridgeError as exc:
            reply = _error_reply(exc.code, exc.message)
        except CoordinatorError as exc:
            reply = _error_reply(_coordinator_code(exc), str(exc))
        except ModelLoadError as exc:
            reply = _error_reply("model_load_failed", str(exc))
        except ValidationError as exc:
            reply = _error_reply("bad_request", _validation_message(exc))
        except TokenFormatError as exc:
            reply = _error_reply("bad_request", str(exc))
        except Exception as exc:  # the host app must never see a Python exception
            log.exception("bridge %s: unexpected failure", method)
            reply = _error_reply("internal", f"internal error in {method!r} ({type(exc).__name__}); see the app log")
        if not reply["ok"] and reply["error"]["code"] != "internal":  # internal is logged above
            log.warning("bridge %s: %s: %s", method, reply["error"]["code"], reply["error"]["message"])
        if request_id is not None:
            reply["id"] = request_id
        return _dumps(reply)

    # ------------------------------------------------------------------------- thin wrappers
    # For Python hosts and tests. Each builds the request JSON and goes through call(), so it
    # answers exactly what the app would get for the same request.
    def configure(self, config: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> str:
        params = dict(config)
        if runtime is not None:
            params["runtime"] = dict(runtime)
        return self._request("configure", params)

    def enroll(self, token: str | None = None) -> str:
        return self._request("enroll", {} if token is None else {"token": token})

    def score(self, candidates: Sequence[Mapping[str, Any]], feature_names: Sequence[str] | None = None) -> str:
        params: dict[str, Any] = {"candidates": [dict(c) for c in candidates]}
        if feature_names is not None:
            params["feature_names"] = list(feature_names)
        return self._request("score", params)

    def round_step(self) -> str:
        return self._request("round_step", {})

    def train(self, epochs: int | None = None, max_samples: int | None = None) -> str:
        params = {k: v for k, v in (("epochs", epochs), ("max_samples", max_samples)) if v is not None}
        return self._request("train", params)

    def status(self) -> str:
        return self._request("status", {})

    def shutdown(self) -> str:
        return self._request("shutdown", {})

    def _request(self, method: str, params: dict[str, Any]) -> str:
        try:
            request = json.dumps({"method": method, "params": params}, default=str, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return _dumps(_error_reply("bad_request", f"params of {method!r} are not JSON-serialisable: {exc}"))
        return self.call(request)

    # ------------------------------------------------------------------------------- methods
    def _configure(self, params: dict[str, Any]) -> dict[str, Any]:
        params = dict(params)
        runtime = RuntimeOptions.from_params(params.pop("runtime", None))
        try:  # ClientConfig checks every field: a ConfigError (a ValueError) names the bad ones
            config = ClientConfig.from_dict(params)
        except (ValueError, TypeError) as exc:
            raise BridgeError("bad_config", str(exc)) from exc
        # The new client is built before the old one is dropped, so a failed reconfigure leaves the
        # working client in place.
        try:
            client = _TunedClient(config, runtime)
        except FileNotFoundError as exc:
            raise BridgeError("bad_config", str(exc)) from exc
        except (ValueError, CryptoError) as exc:
            raise BridgeError("bad_config", str(exc)) from exc
        except OSError as exc:
            where = exc.filename or "a configured path"
            raise BridgeError("bad_config", f"cannot use {where}: {exc.strerror}") from exc
        try:
            history = _History.load(config.state_dir / _BRIDGE_STATE)
            client_id = client.client_id  # restores a stored enrollment; no network
        except BaseException:
            client.transport.close()
            raise
        if client_id is not None:
            history.for_client(client_id)
            client.mark_done(history.done_rounds or [])
        with self._state_lock:
            previous, self._client = self._client, client
            self._history, self._known_round = history, 0
        if previous is not None:
            previous.transport.close()
        log.info("bridge configured for %s (model %s)", config.name, client.slm.model_path)
        return self._snapshot(busy=False)

    def _enroll(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_keys(params, {"token"})
        client = self._require_client()
        token = params.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise BridgeError("bad_request", "token must be a non-empty string")
        if token:
            client.config = client.config.with_overrides(token=token)
        if client.client_id is None and not client.config.token:
            raise BridgeError(
                "bad_request", "this device is not enrolled yet: pass the one-time enrollment token as params.token"
            )
        client_id = client.enroll()
        with self._state_lock:
            self._history.for_client(client_id)
            client.mark_done(self._history.done_rounds or [])
            self._save_history(client)
        return {"enrolled": True, "client_id": client_id}

    def _score(self, params: dict[str, Any]) -> dict[str, Any]:
        """Raw features for the app's own use. They stay on the device, so unlike a round's
        upload they are not privatised (``ClientConfig.dp`` applies to what rounds send)."""
        _check_keys(params, {"candidates", "feature_names"})
        client = self._require_client()
        raw = params.get("candidates")
        if not isinstance(raw, list):
            raise BridgeError(
                "bad_request", "params.candidates must be a list of {question, path, llm_logprob, llm_tokens}"
            )
        if len(raw) > MAX_SCORE_CANDIDATES:
            raise BridgeError("bad_request", f"at most {MAX_SCORE_CANDIDATES} candidates per call (got {len(raw)})")
        candidates: list[Candidate] = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise BridgeError("bad_request", f"candidates[{i}] must be an object")
            try:
                candidates.append(Candidate.model_validate({"sample_id": f"local-{i}", **item}))
            except ValidationError as exc:
                raise BridgeError("bad_request", f"candidates[{i}]: {_validation_message(exc)}") from exc
        names = params.get("feature_names", list(client.config.features))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise BridgeError("bad_request", f"feature_names must be a non-empty list of: {list(FEATURE_NAMES)}")
        try:
            rows = learnability_features(
                client.slm,
                candidates,
                names,
                client.config.batch_size,
                local_questions=[s.question for s in client.data.train],
            )
        except ValueError as exc:
            raise BridgeError("bad_request", str(exc)) from exc
        return {"feature_names": names, "sample_ids": [c.sample_id for c in candidates], "rows": rows.tolist()}

    def _round_step(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_keys(params, set())
        client = self._require_client()
        if client.client_id is None:
            raise BridgeError("not_enrolled", "this device is not enrolled: call enroll with the one-time token first")
        step = client.step(self._known_round)
        info = step.info
        self._known_round = info.round
        reply: dict[str, Any] = {
            "round": info.round,
            "phase": info.phase,
            "total_rounds": info.total_rounds,
            "ran": step.ran,
        }
        if step.already_done:
            reply["reason"] = f"already took part in round {info.round}"
        elif step.left is not None:
            reply["reason"] = f"left round {info.round}: it moved on without this device ({step.left})"
        if step.ran or step.left is not None:
            with self._state_lock:
                self._history.done_rounds = sorted(client.done_rounds)
                if step.result is not None:
                    self._history.last_round = reply["result"] = asdict(step.result)
                self._save_history(client)
        return reply

    def _train(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_keys(params, {"epochs", "max_samples"})
        client = self._require_client()
        cfg = client.config
        epochs = params.get("epochs", max(1, cfg.distill.epochs))
        max_samples = params.get("max_samples", max(1, len(client.data.train)))
        if not _is_int(epochs) or epochs < 1 or not _is_int(max_samples) or max_samples < 1:
            raise BridgeError("bad_request", "epochs and max_samples must be integers >= 1")
        support = cfg.training_support()  # the same check as the can_train declared at enrollment
        if not support:
            raise BridgeError(
                "unsupported",
                f"local training is not possible here: {support.reason}; "
                "this device can still score and take part in rounds without training",
            )
        if not client.data.train:
            raise BridgeError("bad_request", f"client {cfg.name!r} has no private training data in {cfg.data_dir}")
        started = time.perf_counter()
        try:
            report = client.train_local(epochs=epochs, max_samples=max_samples)
        except ImportError as exc:
            raise BridgeError("unsupported", f"local training needs a package not installed here: {exc}") from exc
        result = {
            **report,
            "epochs": epochs,
            "exported": True,  # train_local refreshes the scoring model or fails
            "adapter_dir": str(cfg.state_dir / _ADAPTER_DIR),
            "model_path": str(client.slm.model_path),
            "seconds": time.perf_counter() - started,
        }
        with self._state_lock:
            self._history.last_train = result
            self._save_history(client)
        return result

    def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_keys(params, set())
        return self._snapshot(busy=self._op_lock.locked())

    def _snapshot(self, busy: bool) -> dict[str, Any]:
        with self._state_lock:
            client, history, known_round = self._client, self._history, self._known_round
        if client is None:
            return {"configured": False, "busy": busy}
        cfg = client.config
        client_id = client.transport.client_id  # set by configure and enroll; reading it never blocks
        return {
            "configured": True,
            "busy": busy,
            "client_name": cfg.name,
            "coordinator_url": cfg.coordinator_url,
            "enrolled": client_id is not None,
            "client_id": client_id,
            "model_path": str(client.slm.model_path),
            "providers": client.slm.providers,
            "can_train": cfg.can_train,
            "torch_available": has_module("torch"),
            "can_train_ort": cfg.can_train_ort,
            "train_backend": cfg.train_backend,
            "known_round": known_round,
            "rounds_completed": list(history.done_rounds or []),
            "last_round": history.last_round,
            "last_train": history.last_train,
            "bytes_sent": client.transport.bytes_sent,
            "bytes_received": client.transport.bytes_received,
        }

    def _shutdown(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_keys(params, set())
        with self._state_lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()
            log.info("bridge shut down for %s", client.config.name)
        return {"closed": client is not None}

    # ------------------------------------------------------------------------------- helpers
    def _require_client(self) -> LadaClient:
        with self._state_lock:
            client = self._client
        if client is None:
            raise BridgeError("not_configured", "call configure first")
        return client

    def _save_history(self, client: LadaClient) -> None:
        try:
            self._history.save(client.config.state_dir / _BRIDGE_STATE)
        except OSError as exc:  # bookkeeping only: the round itself has succeeded
            log.warning("cannot save bridge state in %s: %s", client.config.state_dir, exc)


# --------------------------------------------------------------------------------- functions
def _parse_request(request_json: object) -> tuple[str, dict[str, Any], object]:
    if isinstance(request_json, bytes):
        try:
            request_json = request_json.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BridgeError("bad_request", f"request is not UTF-8: {exc.reason}") from exc
    if not isinstance(request_json, str):
        raise BridgeError("bad_request", f"request must be a JSON string, not {type(request_json).__name__}")
    if len(request_json) > MAX_REQUEST_CHARS:
        raise BridgeError("bad_request", f"request is over {MAX_REQUEST_CHARS} characters")
    try:
        request = json.loads(request_json, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BridgeError("bad_request", f"request is not valid JSON: {exc.msg} at {where}") from exc
    except ValueError as exc:  # NaN / Infinity, or numbers too long to parse
        raise BridgeError("bad_request", f"request is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BridgeError("bad_request", "request is nested too deeply") from exc
    if not isinstance(request, dict):
        raise BridgeError("bad_request", 'request must be a JSON object like {"method": ..., "params": {...}}')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, (str, int)):
        raise BridgeError("bad_request", "id must be a string or an integer")
    unknown = set(request) - _REQUEST_KEYS
    if unknown:
        raise BridgeError(
            "bad_request", f"unknown request key(s) {sorted(unknown)}; expected 'method', 'params' and optional 'id'"
        )
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise BridgeError("bad_request", "request needs a 'method' string")
    params = request.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BridgeError("bad_request", "params must be a JSON object")
    return method, params, request_id


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _check_keys(params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        expected = f"expected {sorted(allowed)}" if allowed else "this method takes none"
        raise BridgeError("bad_request", f"unknown param(s) {sorted(unknown)}; {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coordinator_code(exc: CoordinatorError) -> str:
    if exc.status is None and (exc.error == "unreachable" or isinstance(exc.__cause__, httpx.HTTPError)):
        return "coordinator_unreachable"
    if exc.error == "fingerprint_mismatch":
        return "coordinator_untrusted"
    if exc.status is not None and 400 <= exc.status < 500:
        return "coordinator_rejected"
    return "coordinator_error"


def _validation_message(exc: ValidationError) -> str:
    """The first problem, as 'field: message' (pydantic's full text carries URLs and input dumps)."""
    errors = exc.errors()
    if not errors:
        return "invalid value"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid value')}{more}"


def _error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity (org.json rejects them), so they travel as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _dumps(reply: dict[str, Any]) -> str:
    """Serialise a reply. ASCII-only: JNI's modified UTF-8 mangles characters outside the BMP."""
    try:
        return json.dumps(_finite_or_none(reply), allow_nan=False, default=str)
    except (TypeError, ValueError):
        log.exception("bridge reply is not serialisable")
        return json.dumps(_error_reply("internal", "internal error: reply could not be serialised; see the app log"))
